"""
Configuration: the frozen model, and reading it from TOML.
"""
