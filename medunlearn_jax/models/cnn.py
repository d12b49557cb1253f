"""A small convolutional network for tests and quick CPU runs."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from medunlearn_jax.models import layers


class SmallCNN(layers.Layered, nn.Module):
  """Conv-GroupNorm-ReLU stages with 2x2 max-pooling, global average pooling and a linear head.

  Every stage halves the resolution, so the same network serves 28 to 224 px inputs. GroupNorm keeps the
  forward pass a pure function of the parameters (no batch statistics). `kernels` picks stock Flax layers
  ('xla') or the CPU kernels ('native'), see `models.layers`.
  """
  num_classes: int
  widths: Sequence[int] = (32, 64, 128)
  groups: int = 8
  dtype: jnp.dtype = jnp.float32
  kernels: str = 'xla'  # 'xla' (stock Flax layers) or 'native' (models.layers)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train  # No dropout or batch statistics: train and eval are the same function.
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      x = self.conv(width, 3, 1, 1, self.dtype, f'conv{i}')(x)
      x = self.norm(min(self.groups, width), self.dtype, f'norm{i}')(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='head')(x.astype(jnp.float32))
