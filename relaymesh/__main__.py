"""
Run the C{relaymesh} command: C{python -m relaymesh}.
"""

import sys

from relaymesh.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
