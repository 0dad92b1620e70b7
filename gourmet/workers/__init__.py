"""
``[server] workers = N``: a supervisor process that listens, runs the
console and the checks, and N worker processes that serve the listeners
it shares with them, kept in step over Twisted's AMP.
"""
