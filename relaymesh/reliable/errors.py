"""
The errors of the durable store.
"""


class StoreError(Exception):
    """
    The store cannot do what was asked; the message is one line.
    """


class StoreClosed(StoreError):
    """
    The store is closed (or closing) and takes no more calls.
    """


class SchemaTooNew(StoreError):
    """
    The database was written by a newer relaymesh than this one.
    """


class DuplicateMessage(StoreError):
    """
    The outbox already holds a message with that id.
    """


class OutboxFull(StoreError):
    """
    The outbox holds as many messages for a destination as it takes.
    """
