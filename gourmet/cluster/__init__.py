"""
``[cluster]``: Gourmet instances that share what operators change in their
consoles (weights, drains, disables) through etcd, and list each other.
"""
