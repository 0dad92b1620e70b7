"""
What Gourmet knows about its servers: state, balancers, health, connections.
"""
