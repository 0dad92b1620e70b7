"""
Service discovery: upstream servers from DNS, etcd, Kubernetes, a watched
file or a plugin, applied as they change without a reload.
"""
