"""Patient-disjoint splits, and the build steps shared by the medical TFDS builders.

A patient who asks to be forgotten owns every image taken of them, so every image of one patient must sit in
the same split: otherwise a "held-out" test image of a forgotten patient would leak what the model learned
from that patient's training images. `patient_split` assigns whole patients to train/val/test with a seeded,
deterministic permutation of the sorted unique patient ids.

The rest of this module is what `nih_chestxray14.py`, `chexpert.py` and `ham10000.py` share: task/size
checks, image decoding and resizing with PIL, and `build_or_reuse`, which builds a dataset once (array_record
files, no TensorFlow) and leaves no half-built folder behind when a build fails.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from medunlearn_jax import errors

SPLIT_NAMES = ('train', 'val', 'test')
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
SIZES = (28, 64, 128, 224)
# Mixed into every split seed so that a run seed reused elsewhere (forget selection, init) draws
# independent numbers.
_SPLIT_STREAM = 0x5D117


def _split_counts(n: int, fractions: np.ndarray) -> np.ndarray:
  """Patients per split: largest-remainder rounding, then at least one for every non-zero fraction."""
  raw = fractions * n
  counts = np.floor(raw).astype(np.int64)
  remainder = raw - counts
  for i in np.argsort(-remainder, kind='stable')[:n - counts.sum()]:
    counts[i] += 1
  # A split that was asked for but rounded to zero patients would make TFDS write an empty split; take
  # the patient from the largest split instead (only possible when there are enough patients).
  wanted = fractions > 0
  if n >= wanted.sum():
    for i in np.flatnonzero(wanted & (counts == 0)):
      counts[np.argmax(counts)] -= 1
      counts[i] += 1
  return counts


def patient_split(patient_ids: np.ndarray | Sequence[str], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  seed: int = 0, names: Sequence[str] = SPLIT_NAMES) -> np.ndarray:
  """Assigns every row to a split so that all rows of one patient share a split.

  The unique patient ids are sorted (so the result does not depend on row order), permuted with a seeded
  generator, and cut into consecutive blocks of about fraction * n_patients patients (largest-remainder
  rounding; every split with a non-zero fraction gets at least one patient when there are enough).

  Args:
    patient_ids: (N,) patient id per row (any type; compared as strings).
    fractions: fraction of *patients* per split, non-negative, summing to 1; a zero gives an empty split.
    seed: split seed; the same ids, fractions and seed always give the same assignment.
    names: split names, one per fraction.

  Returns:
    (N,) array of split names (str), one per row.

  Raises:
    errors.ConfigError: fractions that are negative, do not sum to 1, or do not match `names`.
  """
  fr = np.asarray(fractions, dtype=np.float64)
  if fr.ndim != 1 or len(fr) != len(names):
    raise errors.ConfigError(f'split fractions {tuple(fractions)} must give one value per split {tuple(names)}')
  if np.any(fr < 0) or not math.isclose(float(fr.sum()), 1.0, abs_tol=1e-6):
    raise errors.ConfigError(f'split fractions must be >= 0 and sum to 1, got {tuple(fractions)}')
  fr = fr / fr.sum()
  pids = np.asarray(patient_ids).astype(str)
  if pids.ndim != 1:
    raise errors.UserError(f'patient_ids must be one-dimensional, got shape {pids.shape}')
  unique, inverse = np.unique(pids, return_inverse=True)  # np.unique sorts
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_STREAM]))
  order = rng.permutation(len(unique))
  counts = _split_counts(len(unique), fr)
  patient_split_index = np.empty(len(unique), dtype=np.int64)
  patient_split_index[order] = np.repeat(np.arange(len(names)), counts)
  width = max((len(n) for n in names), default=1)
  return np.asarray(names, dtype=f'<U{width}')[patient_split_index[inverse]]


# ---------------------------------------------------------------------------------------------------------
# Shared by the builders.

def check_task_size(family: str, task: str, image_size: Any, tasks: Sequence[str]) -> tuple[str, int]:
  """(task, size) after validation; UserError listing the valid choices otherwise."""
  if task not in tasks:
    raise errors.UserError(f'unknown {family} task {task!r}; choose one of: {", ".join(tasks)}')
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size not in SIZES:
    raise errors.UserError(
        f'unsupported {family} image size {image_size!r}; choose one of: {", ".join(map(str, SIZES))}')
  return task, int(image_size)


def normalize_sex(value: str) -> str:
  """'F', 'M' or '' (unknown) from the spellings the sources use (F/M, Female/Male, female/male...)."""
  v = str(value).strip().lower()
  if v in ('f', 'female'):
    return 'F'
  if v in ('m', 'male'):
    return 'M'
  return ''


def parse_float(value: str) -> float:
  """A float, or NaN for an empty or unparsable field."""
  try:
    return float(value)
  except (TypeError, ValueError):
    return float('nan')


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
  if img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    # PIL's convert('L') clips 16-bit values at 255, which would turn most of a 16-bit X-ray white.
    arr = np.asarray(img, dtype=np.float64)
    if arr.max(initial=0) > 255:
      arr = arr / 257.0
    img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode='L')
  return img if img.mode == mode else img.convert(mode)


def resize(img: Image.Image, size: int) -> np.ndarray:
  """uint8 (size, size, C) from a PIL image in mode 'L' or 'RGB', aspect ratio not kept.

  Shrinking uses box (area) averaging, which does not alias; growing (e.g. 8x8 HAM10000 pixels to 28 px)
  uses bilinear interpolation. Both are deterministic for a given PIL version.
  """
  if img.size != (size, size):
    w, h = img.size
    method = Image.Resampling.BOX if (w >= size and h >= size) else Image.Resampling.BILINEAR
    img = img.resize((size, size), method)
  arr = np.asarray(img, dtype=np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def load_image(path: str | os.PathLike, size: int, channels: int) -> np.ndarray:
  """Reads an image file as uint8 (size, size, channels): grayscale (1) or RGB (3)."""
  mode = 'L' if channels == 1 else 'RGB'
  try:
    with Image.open(path) as img:
      if img.format == 'JPEG':
        # Lets libjpeg decode at a reduced scale (still >= size): several times faster on CheXpert's
        # full-resolution files and deterministic.
        img.draft(mode, (size, size))
      return resize(_to_mode(img, mode), size)
  except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
    raise errors.DataError(f'cannot read image {path}: {e}') from e


def array_to_image(pixels: np.ndarray, size: int) -> np.ndarray:
  """uint8 (size, size, C) from a uint8 (h, w) or (h, w, 3) pixel array."""
  arr = np.asarray(pixels, dtype=np.uint8)
  return resize(Image.fromarray(arr, mode='L' if arr.ndim == 2 else 'RGB'), size)


def require_file(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.is_file():
    raise errors.DataError(f'expected {what} at {path}, but there is no such file')
  return path


def require_columns(path: pathlib.Path, header: Sequence[str] | None, columns: Sequence[str]) -> None:
  missing = [c for c in columns if c not in (header or ())]
  if missing:
    raise errors.DataError(f'{path} lacks the column(s) {missing}; expected the official header with '
                           f'{list(columns)}')


def report_missing(family: str, missing: Sequence[str], total: int) -> None:
  if missing:
    logging.warning('%s: %d of %d rows have no image file and are skipped, e.g. %s', family, len(missing),
                    total, ', '.join(map(str, missing[:5])))


def check_usable(family: str, split_of_row: Mapping[str, int], raw_dir: pathlib.Path) -> None:
  """DataError when no row, or no row of some split, has an image."""
  if sum(split_of_row.values()) == 0:
    raise errors.DataError(f'{family}: none of the rows in {raw_dir} has an image file; check the folder layout')
  empty = [s for s, n in split_of_row.items() if n == 0]
  if empty:
    raise errors.DataError(f'{family}: split(s) {empty} would be empty (too few patients with images in '
                           f'{raw_dir}: {dict(split_of_row)})')


def resolve_raw_dir(family: str, raw_dir: str | os.PathLike | None, default: pathlib.Path | None
                    ) -> pathlib.Path:
  """The raw folder to read, or DataError saying how to point the project at one."""
  path = pathlib.Path(raw_dir).expanduser().resolve() if raw_dir is not None else default
  if path is None:
    raise errors.DataError(f'no raw folder for {family}: set MEDUNLEARN_DATA_DIR (expected '
                           f'$MEDUNLEARN_DATA_DIR/{family}/) or pass raw_dir')
  if not path.is_dir():
    raise errors.DataError(f'expected the {family} raw folder at {path}, but it does not exist')
  return path


def is_built(builder: tfds.core.DatasetBuilder) -> bool:
  return (pathlib.Path(os.fspath(builder.data_path)) / 'dataset_info.json').is_file()


def built_metadata(version_dir: pathlib.Path) -> dict[str, Any] | None:
  """The metadata.json of a built dataset folder, or None when it is not built."""
  if not (version_dir / 'dataset_info.json').is_file():
    return None
  path = version_dir / 'metadata.json'
  return json.loads(path.read_text()) if path.is_file() else {}


def _rmdir_if_empty(path: pathlib.Path) -> None:
  try:
    path.rmdir()
  except OSError:
    pass


def build_or_reuse(builder: tfds.core.DatasetBuilder,
                   check_built: Callable[[Mapping[str, Any]], None] | None = None) -> tfds.core.DatasetBuilder:
  """Builds `builder` as array_record files unless it is already built; returns it.

  Args:
    builder: a builder constructed with an explicit data_dir.
    check_built: called with the built dataset's metadata when it already exists, to refuse reusing a
      dataset built with other options (e.g. another split seed); raises UserError.

  On any failure the folders this build created (TFDS's `incomplete.*` folder, the config and dataset
  folders, the download folder) are removed, so the next call starts clean.
  """
  if is_built(builder):
    if check_built is not None:
      check_built(dict(builder.info.metadata or {}))
    return builder
  version_dir = pathlib.Path(os.fspath(builder.data_path))
  config_dir, family_dir = version_dir.parent, version_dir.parent.parent
  existed = {p: p.exists() for p in (config_dir, family_dir)}
  try:
    # Nothing is downloaded (raw files are read from the manual folder), so TFDS's download folder is a
    # throw-away temporary one instead of `<data_dir>/downloads`.
    with tempfile.TemporaryDirectory(prefix='tfds_downloads_') as download_dir:
      builder.download_and_prepare(
          download_dir=download_dir, file_format='array_record',
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except BaseException:
    for leftover in config_dir.glob('*incomplete*'):
      shutil.rmtree(leftover, ignore_errors=True)
    if version_dir.exists() and not (version_dir / 'dataset_info.json').exists():
      shutil.rmtree(version_dir, ignore_errors=True)
    if not existed[config_dir]:
      _rmdir_if_empty(config_dir)
    if not existed[family_dir]:  # TFDS wrote `.config/metadata.json` there before generating
      shutil.rmtree(family_dir / '.config', ignore_errors=True)
      _rmdir_if_empty(family_dir)
    raise
  return builder


def check_option(name: str, built: Mapping[str, Any], requested: Any, where: pathlib.Path) -> None:
  """UserError when a built dataset was made with another value of a build option."""
  if name in built and built[name] != requested:
    raise errors.UserError(f'the dataset at {where} was built with {name}={built[name]!r}, not {requested!r}; '
                           f'use another data_dir or delete that folder to rebuild')
