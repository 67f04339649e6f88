"""The dataset card's front matter for Hugging Face `datasets`: the configs and data files of the
release, and the features of each, so that `datasets.load_dataset(<output folder>)` reads the kept
shards as is (the `image` column as an Image feature: decoded on access) and
`load_dataset(<output folder>, "rejected")` the dropped, failed and duplicate rows.

The features are written from the Arrow schemas of pipeline/schema.py in `datasets`' own YAML
spelling (`dtype: string`, `list: float32`, ...); tests/test_release.py loads a finished run with
`datasets` to hold them to it. The tars beside the shards are for webdataset and open_clip, and
`.capfilt/` and report/ are no data: only the files named here are read.
"""
from __future__ import annotations

import pyarrow as pa
import yaml

from models.errors import CapfiltError

SPLIT = "train"
DATA_FILES = {"default": "shards/*.parquet", "rejected": "rejected/*.parquet"}
_DTYPES = {pa.string(): "string", pa.binary(): "binary", pa.int32(): "int32", pa.int64(): "int64",
           pa.float32(): "float32", pa.float64(): "float64", pa.bool_(): "bool"}
IMAGE_COLUMNS = ("image",)  # encoded image bytes: `datasets`' Image feature


def _dtype(t: pa.DataType) -> str:
    if t not in _DTYPES:
        raise CapfiltError(f"no `datasets` feature is written for Arrow type {t} (pipeline/card_layout.py)")
    return _DTYPES[t]


def features(schema: pa.Schema) -> list[dict]:
    """`datasets`' YAML features of an Arrow schema."""
    out = []
    for f in schema:
        if f.name in IMAGE_COLUMNS and f.type == pa.binary():
            out.append({"name": f.name, "dtype": "image"})
        elif pa.types.is_list(f.type):
            out.append({"name": f.name, "list": _dtype(f.type.value_type)})
        else:
            out.append({"name": f.name, "dtype": _dtype(f.type)})
    return out


def front_matter(shard_schema: pa.Schema, rejected_schema: pa.Schema, rejected: bool) -> str:
    """The `configs` and `dataset_info` of the card's front matter, as YAML; `rejected`: whether
    the release has rejected rows (a config whose files match nothing would not load)."""
    schemas = {"default": shard_schema, **({"rejected": rejected_schema} if rejected else {})}
    configs = [{"config_name": name, **({"default": True} if name == "default" else {}),
                "data_files": [{"split": SPLIT, "path": DATA_FILES[name]}]} for name in schemas]
    info = [{"config_name": name, "features": features(schema)} for name, schema in schemas.items()]
    return yaml.safe_dump({"configs": configs, "dataset_info": info}, sort_keys=False, default_flow_style=False)
