"""
Every use of a private name of Twisted's, fenced in one place.
"""
