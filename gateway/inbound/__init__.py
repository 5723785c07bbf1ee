"""Inbound mail: unsubscribe requests, bounces and complaint reports sent back to optgate."""
