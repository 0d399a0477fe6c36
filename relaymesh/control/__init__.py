"""
The control plane: the local HTTP API, the dashboard, the metrics, and the
client the command line uses to talk to a running node.
"""
