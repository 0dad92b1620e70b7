"""
Gourmet: an HTTP load balancer and reverse proxy on Twisted.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
