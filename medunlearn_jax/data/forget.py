"""Forget sets: which training examples a deletion request names, written down as a verifiable manifest.

The manifest (`forget_manifest.json` in the workdir) holds the sorted forget ids, their count, the sha256 of
the sorted ids, how they were selected (selector name, parameters, seed) and, for patient-level requests,
the forgotten patient ids. Retain = train − forget. `check_disjoint` runs before every retrain so that the
retrained model provably never saw the forgotten data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Mapping

import numpy as np

from medunlearn_jax import errors
from medunlearn_jax.data import dataset as ds_lib

MANIFEST_NAME = 'forget_manifest.json'


def ids_sha256(ids: np.ndarray) -> str:
  """sha256 of the sorted ids written as little-endian int64: the manifest's fingerprint."""
  return hashlib.sha256(np.sort(np.asarray(ids, dtype='<i8')).tobytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ForgetManifest:
  """A validated forget request: sorted unique ids plus provenance."""
  ids: np.ndarray
  selector: str
  params: Mapping[str, Any]
  seed: int
  patient_ids: tuple[str, ...] = ()

  @property
  def sha256(self) -> str:
    return ids_sha256(self.ids)

  def to_json(self) -> dict[str, Any]:
    out = {'count': int(len(self.ids)), 'sha256': self.sha256, 'selector': self.selector,
           'params': dict(self.params), 'seed': int(self.seed), 'ids': [int(i) for i in self.ids]}
    if self.patient_ids:
      out['patient_ids'] = list(self.patient_ids)
    return out

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> ForgetManifest:
    ids = np.asarray(data['ids'], dtype=np.int64)
    manifest = cls(ids, data['selector'], data.get('params', {}), int(data.get('seed', 0)),
                   tuple(data.get('patient_ids', ())))
    if manifest.sha256 != data['sha256'] or len(ids) != data['count']:
      raise errors.DataError('forget manifest is inconsistent: its ids do not match its count/sha256')
    return manifest


def make_manifest(train: ds_lib.Split, ids: np.ndarray, *, selector: str, params: Mapping[str, Any],
                  seed: int, patient_ids=()) -> ForgetManifest:
  """Validates a selection against the training split and returns its manifest.

  Raises UserError for an empty selection, duplicates, ids not in the training split, or a selection that
  would leave the retain set empty or without some class that the training set has.
  """
  ids = np.asarray(ids, dtype=np.int64)
  if ids.size == 0:
    raise errors.UserError(f'forget selection {selector!r} is empty')
  unique, counts = np.unique(ids, return_counts=True)
  if np.any(counts > 1):
    raise errors.UserError(f'forget selection has duplicate ids, e.g. {unique[counts > 1][:5].tolist()}')
  pos = train.positions(unique)  # raises for ids not in train
  keep = np.ones(len(train), bool)
  keep[pos] = False
  if not keep.any():
    raise errors.UserError('forget selection covers the whole training set: the retain set would be empty')
  if train.labels.ndim == 1:
    lost = np.setdiff1d(np.unique(train.labels), np.unique(train.labels[keep]))
    if lost.size:
      raise errors.UserError(f'forget selection leaves no retain example of class(es) {lost.tolist()}')
  return ForgetManifest(unique, selector, dict(params), int(seed), tuple(sorted(map(str, patient_ids))))


def patients_of(train: ds_lib.Split, ids: np.ndarray) -> np.ndarray:
  """Sorted unique patient ids of the training images `ids` (UserError if the split has no patient ids)."""
  if ds_lib.PATIENT_ID not in train.meta:
    raise errors.UserError(f'split {train.name!r} has no {ds_lib.PATIENT_ID!r} metadata: this dataset does not '
                           'support patient-level forgetting')
  return np.unique(train.meta[ds_lib.PATIENT_ID].astype(str)[train.positions(ids)])


def check_patients_complete(train: ds_lib.Split, ids: np.ndarray) -> tuple[str, ...]:
  """The patients that `ids` name images of; UserError if any of them would keep images in the retain set.

  The right to be forgotten belongs to the patient: a request that names some images of a patient while
  others of the same patient stay in training is refused (its caller may explicitly allow it instead).
  """
  ids = np.asarray(ids, dtype=np.int64)
  patients = patients_of(train, ids)
  all_pids = train.meta[ds_lib.PATIENT_ID].astype(str)
  of_patients = np.isin(all_pids, patients)
  named = np.zeros(len(train), bool)
  named[train.positions(ids)] = True
  left = np.unique(all_pids[of_patients & ~named])
  if left.size:
    counts = [int(np.sum(of_patients & ~named & (all_pids == p))) for p in left[:3]]
    raise errors.UserError(
        f'the request names only some images of {left.size} patient(s): e.g. patient(s) '
        f'{left[:3].tolist()} would keep {counts} image(s) in the retain set; add those images, request the '
        'patients instead, or allow partial patients explicitly')
  return tuple(patients.tolist())


def select_random_fraction(train: ds_lib.Split, fraction: float, seed: int) -> ForgetManifest:
  """A uniformly random fraction of the training images (rounded, at least one), seeded."""
  if not 0.0 < fraction < 1.0:
    raise errors.ConfigError(f'forget.fraction must be in (0, 1), got {fraction}')
  count = max(1, int(round(fraction * len(train))))
  rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF0]))
  ids = rng.choice(train.ids, size=count, replace=False)
  return make_manifest(train, ids, selector='random_fraction', params={'fraction': fraction}, seed=seed)


def split_train(train: ds_lib.Split, manifest: ForgetManifest) -> tuple[ds_lib.Split, ds_lib.Split]:
  """(retain, forget) splits of the training split according to a manifest."""
  pos = train.positions(manifest.ids)
  keep = np.ones(len(train), bool)
  keep[pos] = False
  retain, forget = train.take(keep, 'retain'), train.take(np.sort(pos), 'forget')
  check_disjoint(retain, manifest)
  return retain, forget


def check_disjoint(retain: ds_lib.Split, manifest: ForgetManifest) -> None:
  """Fails loudly if any forgotten id (or image of a forgotten patient) is in the retain split."""
  overlap = np.intersect1d(retain.ids, manifest.ids)
  if overlap.size:
    raise errors.DataError(f'{overlap.size} forget id(s) are in the retain set, e.g. {overlap[:5].tolist()}')
  if manifest.patient_ids and ds_lib.PATIENT_ID in retain.meta:
    leaked = np.intersect1d(retain.meta[ds_lib.PATIENT_ID].astype(str), np.asarray(manifest.patient_ids))
    if leaked.size:
      raise errors.DataError(f'{leaked.size} forgotten patient(s) still have images in the retain set, '
                             f'e.g. {leaked[:5].tolist()}')


def write_manifest(manifest: ForgetManifest, workdir: str | os.PathLike) -> pathlib.Path:
  """Writes the manifest atomically (temp file + rename); returns its path."""
  path = pathlib.Path(workdir) / MANIFEST_NAME
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(manifest.to_json(), indent=1))
  os.replace(tmp, path)
  return path


def read_manifest(workdir: str | os.PathLike) -> ForgetManifest | None:
  """The manifest in `workdir`, verified against its own sha256, or None if there is none."""
  path = pathlib.Path(workdir) / MANIFEST_NAME
  if not path.exists():
    return None
  return ForgetManifest.from_json(json.loads(path.read_text()))
