"""A small convolutional network for tests and quick CPU runs."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class SmallCNN(nn.Module):
  """Conv-GroupNorm-ReLU stages with 2x2 max-pooling, global average pooling and a linear head.

  Every stage halves the resolution, so the same network serves 28 to 224 px inputs. GroupNorm keeps the
  forward pass a pure function of the parameters (no batch statistics).
  """
  num_classes: int
  widths: Sequence[int] = (32, 64, 128)
  groups: int = 8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train  # No dropout or batch statistics: train and eval are the same function.
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (3, 3), use_bias=False, dtype=self.dtype, name=f'conv{i}')(x)
      x = nn.GroupNorm(num_groups=min(self.groups, width), dtype=self.dtype, name=f'norm{i}')(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='head')(x.astype(jnp.float32))
