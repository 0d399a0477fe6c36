"""
How a reliable message looks on the wire, for every module that handles one
(the outbox, and the router that carries one across hops).
"""

from relaymesh.wire import MessageType

#: The top-level field that marks a message as reliable.
RELIABLE_FIELD = "reliable"

#: The capability a node announces when it sends and acknowledges reliable
#: messages.
ACK_CAPABILITY = "ack/1"

#: The payload field of an C{ack} that names the acknowledged message.
ACK_ID_FIELD = "ack_id"  # claudectl 0.49: {"ack_id": ID}

#: The message types that are never sent reliably.
UNRELIABLE_TYPES = frozenset({MessageType.HEARTBEAT.value, MessageType.ACK.value})
