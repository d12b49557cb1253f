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


class PlainCNN(layers.Layered, nn.Module):
  """Conv-ReLU-maxpool stages, then the flattened feature map through a ReLU dense layer and a linear head.

  The classic small image classifier (as in the Flax MNIST example: conv 32 → conv 64 → dense 256). Without
  normalisation or global pooling its flatten head has capacity to spare at 28 px (0.8 M parameters for
  3 × 28 × 28 inputs), so trained long enough it fits its training set, memorised examples included: the
  regime in which unlearning is measurable (a forget set the original fits and a retrained model does not).
  """
  num_classes: int
  widths: Sequence[int] = (32, 64)
  dense: int = 256
  dtype: jnp.dtype = jnp.float32
  kernels: str = 'xla'  # 'xla' (stock Flax layers) or 'native' (models.layers)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      # The layers' convolutions have no bias (the other models normalise after them); this one adds it.
      bias = self.param(f'conv{i}_bias', nn.initializers.zeros, (width,), jnp.float32)
      x = nn.relu(self.conv(width, 3, 1, 1, self.dtype, f'conv{i}')(x) + bias.astype(self.dtype))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    # Named after its position, so that `models.blocks` keeps forward order (conv0, conv1, fc2, head).
    x = nn.relu(nn.Dense(self.dense, dtype=self.dtype, name=f'fc{len(self.widths)}')(x))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='head')(x.astype(jnp.float32))
