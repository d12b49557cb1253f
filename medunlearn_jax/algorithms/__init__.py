"""Registry of training and unlearning algorithms, selected by name in configs.

Each algorithm lives in its own module and registers itself with `register`: a name, a function returning
its default hyper-parameters (an `ml_collections.ConfigDict`, with a `search_space` entry documenting the
tuning grid), and a builder `build(problem, hparams, sizes, batch_size) -> Algorithm`. An algorithm that
differentiates the model forward (`jax.jvp`, Hessian-vector products) registers with `forward_mode=True`, and
a run that includes it builds its model from stock layers (`models.layers`: custom VJPs have no forward mode).
An algorithm that reads a record of the original's training (Amnesiac) registers with `needs_record=True`;
the pipeline then hands it the record in `Env.record`.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from typing import Callable, Mapping

import ml_collections

from medunlearn_jax import errors
from medunlearn_jax.algorithms.base import Algorithm, Phase, Problem  # pylint: disable=unused-import

Builder = Callable[[Problem, ml_collections.ConfigDict, Mapping[str, int], int], Algorithm]


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  default_config: Callable[[], ml_collections.ConfigDict]
  build: Builder
  doc: str = ''
  forward_mode: bool = False
  # `check(hparams, forget_config)`: raises ConfigError, before any work, for a run it cannot serve.
  check: Callable[[ml_collections.ConfigDict, ml_collections.ConfigDict], None] | None = None
  needs_record: bool = False
  # False for an algorithm that chooses its parameters after training with data (SCRUB+R's rewind), which
  # the vmapped populations and sweeps cannot do.
  in_populations: bool = True


_REGISTRY: dict[str, Entry] = {}
# Modules of this package that hold no algorithm; every other module registers one when imported.
_NOT_ALGORITHMS = ('base',)


def register(name: str, default_config: Callable[[], ml_collections.ConfigDict], build: Builder,
             doc: str = '', forward_mode: bool = False,
             check: Callable[[ml_collections.ConfigDict, ml_collections.ConfigDict], None] | None = None,
             needs_record: bool = False, in_populations: bool = True) -> None:
  """Registers an algorithm; `forward_mode=True` when its losses or set-up use forward-mode AD; `check`
  validates a run's hyper-parameters and forget-set config before any work (e.g. UNSIR needs classes);
  `needs_record=True` when its `prepare` reads `env.record`; `in_populations=False` when populations and
  sweeps cannot run it."""
  if name in _REGISTRY:
    raise ValueError(f'algorithm {name!r} registered twice')
  _REGISTRY[name] = Entry(name, default_config, build, doc, forward_mode, check, needs_record, in_populations)


def get(name: str) -> Entry:
  if name not in _REGISTRY:
    raise errors.ConfigError(f'unknown algorithm {name!r}; choose from {names()}')
  return _REGISTRY[name]


def names(include_internal: bool = False) -> list[str]:
  return sorted(n for n in _REGISTRY if include_internal or n != 'erm')


def default_configs() -> ml_collections.ConfigDict:
  """Hyper-parameters of every unlearning algorithm, keyed by name (for `config.algo`)."""
  return ml_collections.ConfigDict({n: _REGISTRY[n].default_config() for n in names()})


def steps_per_epoch(size: int, batch_size: int) -> int:
  """Steps of one epoch: the last, partial batch is padded with a mask, never dropped."""
  return max(1, math.ceil(size / batch_size))


for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
  if _module not in _NOT_ALGORITHMS and not _module.startswith('_'):
    importlib.import_module(f'medunlearn_jax.algorithms.{_module}')
