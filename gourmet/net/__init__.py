"""
Byte streams below HTTP: two connections spliced together
(:mod:`gourmet.net.splice`), for upgraded HTTP connections and TCP
streams.
"""
