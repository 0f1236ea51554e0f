"""
Management: the HTTP API (status, actions, events, log tails, metrics) and the
live dashboard it serves.  It reads the supervisor through
L{lmproxy.interfaces.IBackends}, as the listeners do.
"""
