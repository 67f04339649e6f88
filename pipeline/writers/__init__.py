"""Writers of a run's published rows: the protocol in base.py, one file per output format, each
registered by one import line in registry.py. pipeline/sinks.py plans the output and calls them."""
