"""
The client side: connections, the site, routing, errors and the access log.
"""
