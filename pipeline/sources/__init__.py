"""Sources of a run's input rows: the protocol in base.py, one file per input format, each
registered by one import line in registry.py."""
from pipeline.sources.img2dataset import shard_parquets  # noqa: F401  (workflows read raw shards by it)
