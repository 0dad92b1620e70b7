"""
The admin console: its app, who may use it, its views and metrics.
"""
