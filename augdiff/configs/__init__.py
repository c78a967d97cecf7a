"""The configs shipped with augdiff, one ``get_config(variant)`` module per experiment or command
(big_vision style). Named by spec: ``configs/<name>.py[:variant]`` resolves here
(:func:`augdiff.config.resolve_path`); a config that builds on another imports it.
"""
