"""The version of relaymesh, kept apart so that packaging can read it cheaply."""

__version__ = "0.1.0"
