"""
Multi-hop routing: the table, the envelope, and the router that runs them.
"""
