"""ResNet-18 for 28-224 px medical images (He et al., CVPR 2016), the family used by MedMNIST and
"Machine Unlearning for Medical Imaging" (Nasirigerdeh et al., arXiv 2407.07539).

The stem is CIFAR-style (3x3 conv, stride 1, no max-pool) for small inputs; inputs of 128 px and more use
the ImageNet stem (7x7 stride-2 conv and 3x3 max-pool) so that the feature maps stay affordable. GroupNorm is
the default normalisation so that every step is a pure function of the parameters.

Layers: `kernels='xla'` (the default) builds it from stock `flax.linen.Conv` / `flax.linen.GroupNorm`;
`kernels='native'` from the `medunlearn_jax.ops` layers with the CPU kernels (same parameters and, to float32
rounding, the same function; see `models.layers`). A run chooses once, from `config.model.kernels`.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from medunlearn_jax.models import layers


class BasicBlock(layers.Layered, nn.Module):
  """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""
  features: int = 64
  strides: int = 1
  groups: int = 32
  dtype: jnp.dtype = jnp.float32
  kernels: str = 'xla'  # 'xla' (stock Flax layers) or 'native' (models.layers)

  @nn.compact
  def __call__(self, x):
    g = min(self.groups, self.features)
    y = self.conv(self.features, 3, self.strides, 1, self.dtype, 'conv1')(x)
    y = nn.relu(self.norm(g, self.dtype, 'norm1')(y))
    y = self.conv(self.features, 3, 1, 1, self.dtype, 'conv2')(y)
    y = self.norm(g, self.dtype, 'norm2')(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = self.conv(self.features, 1, self.strides, 0, self.dtype, 'proj_conv')(x)
      x = self.norm(g, self.dtype, 'proj_norm')(x)
    return nn.relu(x + y)


class ResNet(layers.Layered, nn.Module):
  """ResNet with basic blocks; parameters are grouped as stem / stage{i}_block{j} / head so that
  algorithms can address "the last k blocks" by name (see `block_names`)."""
  num_classes: int = 2
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  groups: int = 32
  imagenet_stem: bool | None = None  # None: chosen from the input size (>= 128 px).
  dtype: jnp.dtype = jnp.float32
  kernels: str = 'xla'  # 'xla' (stock Flax layers) or 'native' (models.layers)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    x = x.astype(self.dtype)
    imagenet = self.imagenet_stem if self.imagenet_stem is not None else x.shape[1] >= 128
    if imagenet:
      x = self.conv(self.widths[0], 7, 2, 3, self.dtype, 'stem_conv')(x)
    else:
      x = self.conv(self.widths[0], 3, 1, 1, self.dtype, 'stem_conv')(x)
    x = nn.relu(self.norm(min(self.groups, self.widths[0]), self.dtype, 'stem_norm')(x))
    if imagenet:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for i, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(blocks):
        strides = 2 if (i > 0 and j == 0) else 1
        x = BasicBlock(features=width, strides=strides, groups=self.groups, dtype=self.dtype,
                       name=f'stage{i + 1}_block{j + 1}', kernels=self.kernels)(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, name='head')(x)


def resnet18(num_classes: int, **kwargs) -> ResNet:
  return ResNet(num_classes=num_classes, stage_sizes=(2, 2, 2, 2), **kwargs)
