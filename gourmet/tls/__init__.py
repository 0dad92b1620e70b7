"""
TLS that Gourmet terminates itself: certificates read and checked
(:mod:`gourmet.tls.certificates`), the server contexts built from them and
chosen by the name a client asks for (:mod:`gourmet.tls.store`), and
certificates obtained and renewed from an ACME server
(:mod:`gourmet.tls.renewal`).
"""
