"""Scorers of (image, text) pairs for the filter stage: the protocol in base.py, one file per kind,
each registered by one import line in registry.py."""
