"""
What a request becomes on its way to an upstream and back.
"""
