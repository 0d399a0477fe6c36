"""The version of relaymesh, kept apart so that packaging can read it cheaply."""

__version__ = "0.2.0.dev0"
