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

#: The longest message id a reliable message, or a routed one, may carry:
#: longer ones are refused, so that a peer cannot make the delivered-id
#: record or the routers' memory of messages grow by sending long ids.
#: (This node's own ids are about 40 characters.)
MAX_ID_LENGTH = 128
