"""ResNet-18 for 28-224 px medical images (He et al., CVPR 2016), the family used by MedMNIST and
"Machine Unlearning for Medical Imaging" (Nasirigerdeh et al., arXiv 2407.07539).

The stem is CIFAR-style (3x3 conv, stride 1, no max-pool) for small inputs; inputs of 128 px and more use
the ImageNet stem (7x7 stride-2 conv and 3x3 max-pool) so that the feature maps stay affordable. GroupNorm is
the default normalisation so that every step is a pure function of the parameters.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""
  features: int
  strides: int = 1
  groups: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    norm = lambda name: nn.GroupNorm(num_groups=min(self.groups, self.features), dtype=self.dtype, name=name)
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), padding=1, use_bias=False,
                dtype=self.dtype, name='conv1')(x)
    y = nn.relu(norm('norm1')(y))
    y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name='conv2')(y)
    y = norm('norm2')(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = nn.Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False, dtype=self.dtype,
                  name='proj_conv')(x)
      x = norm('proj_norm')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet with basic blocks; parameters are grouped as stem / stage{i}_block{j} / head so that
  algorithms can address "the last k blocks" by name (see `block_names`)."""
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  groups: int = 32
  imagenet_stem: bool | None = None  # None: chosen from the input size (>= 128 px).
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    x = x.astype(self.dtype)
    imagenet = self.imagenet_stem if self.imagenet_stem is not None else x.shape[1] >= 128
    if imagenet:
      x = nn.Conv(self.widths[0], (7, 7), (2, 2), padding=3, use_bias=False, dtype=self.dtype,
                  name='stem_conv')(x)
    else:
      x = nn.Conv(self.widths[0], (3, 3), padding=1, use_bias=False, dtype=self.dtype, name='stem_conv')(x)
    x = nn.relu(nn.GroupNorm(num_groups=min(self.groups, self.widths[0]), dtype=self.dtype,
                             name='stem_norm')(x))
    if imagenet:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for i, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(blocks):
        strides = 2 if (i > 0 and j == 0) else 1
        x = BasicBlock(width, strides, self.groups, self.dtype, name=f'stage{i + 1}_block{j + 1}')(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, name='head')(x)


def resnet18(num_classes: int, **kwargs) -> ResNet:
  return ResNet(num_classes=num_classes, stage_sizes=(2, 2, 2, 2), **kwargs)
