"""
The C{relaymesh} command line.
"""
