"""Where raw dataset files and built TFDS datasets live.

Raw files (official downloads, manual downloads) live under one root given by the environment variable
`MEDUNLEARN_DATA_DIR` (a config field may override it), one folder per dataset family:
`<root>/medmnist/pneumoniamnist.npz`, `<root>/nih_chestxray14/Data_Entry_2017.csv`, ...

Built datasets live in the standard TFDS data dir (`TFDS_DATA_DIR`, default `~/tensorflow_datasets`) so
that plain `tfds.builder_from_directory(...)` reads what this project built.
"""
from __future__ import annotations

import os
import pathlib

RAW_DIR_ENV = 'MEDUNLEARN_DATA_DIR'
TFDS_DIR_ENV = 'TFDS_DATA_DIR'


def raw_root(override: str | os.PathLike | None = None) -> pathlib.Path | None:
  """The root of all raw dataset folders, or None when neither override nor env var is set."""
  value = override or os.environ.get(RAW_DIR_ENV)
  return pathlib.Path(value).expanduser().resolve() if value else None


def raw_dir(family: str, override: str | os.PathLike | None = None) -> pathlib.Path | None:
  """The raw folder of one dataset family (e.g. 'medmnist'), or None when no root is configured."""
  root = raw_root(override)
  return root / family if root is not None else None


def tfds_data_dir(override: str | os.PathLike | None = None) -> pathlib.Path:
  """The TFDS data dir where built datasets are written and read."""
  value = override or os.environ.get(TFDS_DIR_ENV) or '~/tensorflow_datasets'
  return pathlib.Path(value).expanduser().resolve()
