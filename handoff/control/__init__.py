"""The control socket: its vocabulary, the server in the session, the light client, who may use it.

Empty on purpose: the client side must not load the server (trio).
"""
