"""
TCP load balancing (the ``[[streams]]``): nginx's ``stream`` block,
HAProxy's ``mode tcp``.
"""
