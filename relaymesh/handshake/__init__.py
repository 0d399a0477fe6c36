"""
The pre-shared key handshake: proofs, strong pairing, and the two roles.
"""
