"""Model registry: `make_model(name, num_classes, kernels=..., **kwargs)` returns a Flax Linen module.

Every model maps uint8-normalised float images (B, H, W, C) to logits (B, num_classes); parameters are an
explicit pytree with top-level entries in forward order (used by algorithms that address the last k blocks).
`kernels` chooses stock Flax layers ('xla', the default) or the CPU kernels ('native'); a run resolves
`config.model.kernels` ('auto' | 'xla' | 'native') once with `resolve_kernels` (see `models.layers`).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medunlearn_jax import errors
from medunlearn_jax.models import cnn
from medunlearn_jax.models import layers
from medunlearn_jax.models import resnet

stock_layers = layers.stock_layers

_MODELS: dict[str, Callable[..., nn.Module]] = {
    'small_cnn': cnn.SmallCNN,
    'plain_cnn': cnn.PlainCNN,
    'resnet18': resnet.resnet18,
}


def names() -> list[str]:
  return sorted(_MODELS)


# Models whose native layers measured faster than their stock ones on single-device CPU, float32
# (2-core Intel VM, batch 128, 28 px train / eval: ResNet-18 2.5x / 1.7x, small CNN 1.3x / 2.1x;
# benchmarks/PERF_NOTES.md); `kernels='auto'` picks 'native' for these only.
_NATIVE_FASTER = {'resnet18', 'small_cnn'}


def make_model(name: str, num_classes: int, *, dtype: str = 'float32', kernels: str = 'xla',
               **kwargs: Any) -> nn.Module:
  """Builds a registered model; `dtype` is the compute dtype (parameters stay float32), `kernels` its layers
  ('xla' or 'native', as resolved by `resolve_kernels`)."""
  if name not in _MODELS:
    raise errors.ConfigError(f'unknown model {name!r}; choose one of {names()}')
  return _MODELS[name](num_classes=num_classes, dtype=jnp.dtype(dtype), kernels=kernels, **kwargs)


def resolve_kernels(name: str, requested: str, *, dtype: str = 'float32', forward_mode: Sequence[str] = (),
                    devices: Sequence[jax.Device] | None = None) -> str:
  """The layers ('xla' or 'native') a run of model `name` uses for `config.model.kernels=requested`;
  `forward_mode` names the run's algorithms that need forward-mode AD (`layers.resolve`)."""
  return layers.resolve(requested, dtype=dtype, native_faster=name in _NATIVE_FASTER,
                        forward_mode=forward_mode, devices=devices)


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
  of this package's models (`stem_*`, `stage{i}_block{j}` or `conv{i}`/`norm{i}`/`fc{i}`, `head`).
  """
  groups: dict[tuple[int, int, int], list[str]] = {}
  for name in params:
    groups.setdefault(_block_key(name), []).append(name)
  return [tuple(sorted(groups[k])) for k in sorted(groups)]
