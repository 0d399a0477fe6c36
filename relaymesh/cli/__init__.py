"""
The C{relaymesh} command line: L{main} builds the parser from the commands
of L{keys}, L{live}, L{pairing} and L{security}, which share L{base}.
"""
