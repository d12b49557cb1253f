"""What this project's TFDS builders share: where TFDS finds their code, task × size configs, and the
feature schema of the medical datasets (stable id, image, label, patient id, sex, age)."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.data import paths


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders that live in this package (not in a TFDS package folder)."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default looks the package up through `importlib_resources`, which TFDS 4.9.10 needs but does
    # not install; the module file is what it would find (no checksums.tsv beside it).
    return epath.Path(sys.modules[cls.__module__].__file__)


class PatientBuilder(LocalBuilder, skip_registration=True):
  """A builder reading a manual folder (`raw_dir`, default `$MEDUNLEARN_DATA_DIR/<RAW_FAMILY>`) whose
  splits are drawn by patient with `split_seed`."""
  RAW_FAMILY = ''

  def __init__(self, *, raw_dir: str | os.PathLike | None = None, split_seed: int = 0, **kwargs):
    self._raw_dir = (pathlib.Path(raw_dir).expanduser().resolve() if raw_dir is not None
                     else paths.raw_dir(self.RAW_FAMILY))
    self._split_seed = int(split_seed)
    super().__init__(**kwargs)


@dataclasses.dataclass(eq=False)
class TaskConfig(tfds.core.BuilderConfig):
  """One task at one image size (config name `<task>_<size>`)."""
  task: str = 'binary'
  image_size: int = 28


def medical_features(size: int, channels: int, label: tfds.features.FeatureConnector,
                     **extra: tfds.features.FeatureConnector) -> tfds.features.FeaturesDict:
  """The common schema: id, zlib-compressed uint8 image, label, patient id, sex ('F'/'M'/''), age
  (NaN unknown), plus dataset-specific fields."""
  return tfds.features.FeaturesDict({
      ds_lib.ID: tfds.features.Scalar(dtype=np.int64),
      ds_lib.IMAGE: tfds.features.Tensor(shape=(size, size, channels), dtype=np.uint8,
                                         encoding=tfds.features.Encoding.ZLIB),
      ds_lib.LABEL: label,
      ds_lib.PATIENT_ID: tfds.features.Text(),
      ds_lib.SEX: tfds.features.Text(),
      ds_lib.AGE: tfds.features.Scalar(dtype=np.float32),
      **extra,
  })


def label_feature(multilabel_size: int | None) -> Any:
  """Scalar class label, or a multi-hot vector of `multilabel_size` labels."""
  if multilabel_size is None:
    return tfds.features.Scalar(dtype=np.int64)
  return tfds.features.Tensor(shape=(multilabel_size,), dtype=np.int64)
