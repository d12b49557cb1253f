"""Datasets: TFDS builders (no TensorFlow), in-memory splits with ids and metadata, forget sets.

`load(dataset_config)` prepares (builds once, then reuses) the TFDS dataset named by the config and returns
its `DatasetInfo` and a dict of `Split`s ('train', 'val', 'test').
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Mapping

import jax
import numpy as np
import tensorflow_datasets as tfds

from medunlearn_jax import errors
from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.data import paths

MEDMNIST_2D = ('pathmnist', 'chestmnist', 'dermamnist', 'octmnist', 'pneumoniamnist', 'retinamnist',
               'breastmnist', 'bloodmnist', 'tissuemnist', 'organamnist', 'organcmnist', 'organsmnist')
# Dataset families with patient metadata (their builders live in modules of the same name).
MEDICAL = ('nih_chestxray14', 'chexpert', 'ham10000')


def family(name: str) -> str:
  if name in MEDMNIST_2D:
    return 'medmnist'
  if name in MEDICAL:
    return name
  raise errors.ConfigError(f'unknown dataset {name!r}; choose one of {sorted(MEDMNIST_2D + MEDICAL)}')


def _module(name: str):
  return importlib.import_module(f'medunlearn_jax.data.{family(name)}')


def prepare(cfg: Mapping[str, Any]) -> tuple[tfds.core.DatasetBuilder, ds_lib.DatasetInfo]:
  """Builds (or finds already built) the dataset of a config's `dataset` section.

  TFDS's progress bars are shown on a terminal only: written to a log file or a pipe, tqdm's cursor
  movements become raw escape codes; TFDS still logs each step of a build.
  """
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  name, size = cfg['name'], int(cfg['image_size'])
  module = _module(name)
  common = dict(raw_dir=paths.raw_dir(family(name), cfg.get('raw_data_dir') or None),
                data_dir=paths.tfds_data_dir(cfg.get('tfds_data_dir') or None))
  if family(name) == 'medmnist':
    builder = module.prepare(name, size, download=bool(cfg.get('download', True)), **common)
    info = module.dataset_info(name, size)
  else:
    task = cfg.get('task') or 'binary'
    builder = module.prepare(task, size, **common)
    info = module.dataset_info(task, size)
  return builder, info


def read_splits(builder: tfds.core.DatasetBuilder, names: tuple[str, ...] = ('train', 'val', 'test'),
                lazy_images: bool | None = None) -> dict[str, ds_lib.Split]:
  """Reads splits of a built dataset through `tfds.data_source`.

  Ids, labels and metadata are read into host memory. Images are too, except with `lazy_images` (default:
  in multi-process runs), where each process reads image rows on demand, only those of its own devices.
  """
  lazy = jax.process_count() > 1 if lazy_images is None else lazy_images
  try:
    sources = builder.as_data_source()
    skipping = (builder.as_data_source(decoders={ds_lib.IMAGE: tfds.decode.SkipDecoding()}) if lazy else None)
  except (RuntimeError, ValueError) as e:
    raise ds_lib.corrupt_build(builder.data_dir, e) from e
  out = {}
  for name in names:
    if name not in sources:
      raise errors.DataError(f'dataset {builder.name} has no split {name!r} (has {sorted(sources)})')
    source = sources[name]
    rows = list(range(len(source)))
    if not lazy:
      out[name] = ds_lib.records_to_split(name, ds_lib.read_records(source, rows, builder.data_dir))
      continue
    # Image i is record i; records_to_split reorders both by id.
    images = ds_lib.SourceImages(source, np.asarray(rows), tuple(builder.info.features[ds_lib.IMAGE].shape),
                                  builder.data_dir)
    out[name] = ds_lib.records_to_split(name, ds_lib.read_records(skipping[name], rows, builder.data_dir), images=images)
  return out


def load(cfg: Mapping[str, Any]) -> tuple[ds_lib.DatasetInfo, dict[str, ds_lib.Split]]:
  """`prepare` + `read_splits`: the dataset info and its train/val/test splits in memory."""
  builder, info = prepare(cfg)
  return info, read_splits(builder)
