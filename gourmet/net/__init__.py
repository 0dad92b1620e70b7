"""
Byte streams below HTTP: two connections spliced together
(:mod:`gourmet.net.splice`), for upgraded HTTP connections and TCP
streams.

The PROXY protocol's header, which carries a client's address at the start
of a connection (:mod:`gourmet.net.proxy_header`, pure Python).
"""
