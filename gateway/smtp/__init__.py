"""The SMTP edges: the listener, its paths, the next-hop client and relay, replies."""
