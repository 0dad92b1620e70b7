"""
etcd, as Gourmet speaks to it: its v3 JSON gateway, the options that say
where it is, a prefix read and watched, and single calls tried on each
member in turn.  Used by ``provider = "etcd"`` and by ``[cluster]``.
"""
