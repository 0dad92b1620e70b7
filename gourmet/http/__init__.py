"""
HTTP/1.1 syntax and the rules a proxy follows, with no Twisted in it.
"""
