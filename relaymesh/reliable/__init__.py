"""
Reliable delivery: the durable store and the outbox.
"""
