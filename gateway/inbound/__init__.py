"""Inbound mail: unsubscribe requests, bounces and complaints."""
