"""
The C{twistd relaymesh} plugin. It stays small so that a plugin scan does
not import the whole package.
"""

from twisted.application.service import ServiceMaker

relaymesh = ServiceMaker(
    "relaymesh",
    "relaymesh.tap",
    "A relaymesh node: a peer-to-peer relay speaking the claudectl 0.49 relay protocol.",
    "relaymesh",
)
