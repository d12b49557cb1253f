"""Model registry: `make_model(name, num_classes, **kwargs)` returns a Flax Linen module.

Every model maps uint8-normalised float images (B, H, W, C) to logits (B, num_classes); parameters are an
explicit pytree with top-level entries in forward order (used by algorithms that address the last k blocks).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from medunlearn_jax import errors
from medunlearn_jax.models import cnn
from medunlearn_jax.models import resnet

_MODELS: dict[str, Callable[..., nn.Module]] = {
    'small_cnn': cnn.SmallCNN,
    'resnet18': resnet.resnet18,
}


def names() -> list[str]:
  return sorted(_MODELS)


def make_model(name: str, num_classes: int, *, dtype: str = 'float32', **kwargs: Any) -> nn.Module:
  """Builds a registered model; `dtype` is the compute dtype (parameters stay float32)."""
  if name not in _MODELS:
    raise errors.ConfigError(f'unknown model {name!r}; choose one of {names()}')
  return _MODELS[name](num_classes=num_classes, dtype=jnp.dtype(dtype), **kwargs)


def _block_key(name: str) -> tuple[int, int, int]:
  if name.startswith('stem'):
    return (0, 0, 0)
  if name == 'head':
    return (2, 0, 0)
  numbers = [int(n) for n in re.findall(r'\d+', name)] + [0, 0]
  return (1, numbers[0], numbers[1])


def blocks(params: Mapping[str, Any]) -> list[tuple[str, ...]]:
  """Top-level parameter names grouped into blocks, in forward order: stem, stages/blocks, head.

  Flax stores parameters in a dict sorted by name, so forward order is recovered from the naming scheme
  of this package's models (`stem_*`, `stage{i}_block{j}` or `conv{i}`/`norm{i}`, `head`).
  """
  groups: dict[tuple[int, int, int], list[str]] = {}
  for name in params:
    groups.setdefault(_block_key(name), []).append(name)
  return [tuple(sorted(groups[k])) for k in sorted(groups)]
