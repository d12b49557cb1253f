"""ResNet-18 for 28-224 px medical images (He et al., CVPR 2016), the family used by MedMNIST and
"Machine Unlearning for Medical Imaging" (Nasirigerdeh et al., arXiv 2407.07539).

The stem is CIFAR-style (3x3 conv, stride 1, no max-pool) for small inputs; inputs of 128 px and more use
the ImageNet stem (7x7 stride-2 conv and 3x3 max-pool) so that the feature maps stay affordable. GroupNorm is
the default normalisation so that every step is a pure function of the parameters.

Implementation switches (same parameters and float32 function either way; see `benchmarks/PERF_NOTES.md`):
  conv_impl: 'flax' (`nn.Conv`), 'xla' (plain `lax.conv_general_dilated`) or 'custom' (`ops.conv2d`, a
    custom VJP: flipped-kernel / parity-split input gradients);
  norm_impl: 'flax' (`nn.GroupNorm`, one-pass variance, autodiff) or 'custom' (`ops.group_norm`, shifted
    moments, closed-form VJP; the native kernel of `ops.native` for float32 on single-device XLA:CPU);
  barrier: `lax.optimization_barrier` on convolution inputs (stops XLA recomputing the norm chain in the
    backward pass);
  conv_kernel: the custom convolution's stride-1 forward and input-gradient kernels ('auto': the native
    kernel of `ops.native` where it applies, else XLA's; 'xla'; 'native');
  wgrad / wgrad_chunks: how the custom convolution computes weight gradients ('auto', 'native', 'conv' or
    'taps', see `ops.conv`; and the
    number of batch chunks accumulated on feature maps of 28x28 and more).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medunlearn_jax import ops

# The defaults are what measured fastest on XLA:CPU with equal numerics (benchmarks/PERF_NOTES.md).
DEFAULT_IMPL = dict(conv_impl='custom', norm_impl='custom', barrier=True, wgrad='auto', wgrad_chunks=1,
                    conv_kernel='auto')


class _Impl(nn.Module):
  """Shared implementation switches."""
  conv_impl: str = DEFAULT_IMPL['conv_impl']
  norm_impl: str = DEFAULT_IMPL['norm_impl']
  barrier: bool = DEFAULT_IMPL['barrier']
  wgrad: str = DEFAULT_IMPL['wgrad']
  wgrad_chunks: int = DEFAULT_IMPL['wgrad_chunks']
  conv_kernel: str = DEFAULT_IMPL['conv_kernel']

  def conv(self, features, kernel, strides, padding, dtype, name):
    if self.conv_impl == 'flax':  # The stock layer, exactly as before these switches existed.
      layer = nn.Conv(features, (kernel, kernel), (strides, strides), padding='SAME' if kernel == 1 else padding,
                      use_bias=False, dtype=dtype, name=name)
      return (lambda x: layer(jax.lax.optimization_barrier(x))) if self.barrier else layer
    return ops.Conv(features, kernel, strides, padding, dtype, self.conv_impl, self.wgrad, self.wgrad_chunks,
                    self.barrier, self.conv_kernel, name=name)

  def norm(self, groups, dtype, name):
    if self.norm_impl == 'flax':
      return nn.GroupNorm(num_groups=groups, dtype=dtype, name=name)
    if self.norm_impl != 'custom':
      raise ValueError(f'unknown norm impl {self.norm_impl!r}')
    return ops.GroupNorm(num_groups=groups, dtype=dtype, name=name)

  def impl_kwargs(self):
    return dict(conv_impl=self.conv_impl, norm_impl=self.norm_impl, barrier=self.barrier, wgrad=self.wgrad,
                wgrad_chunks=self.wgrad_chunks, conv_kernel=self.conv_kernel)


class BasicBlock(_Impl):
  """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""
  features: int = 64
  strides: int = 1
  groups: int = 32
  dtype: jnp.dtype = jnp.float32

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


class ResNet(_Impl):
  """ResNet with basic blocks; parameters are grouped as stem / stage{i}_block{j} / head so that
  algorithms can address "the last k blocks" by name (see `block_names`)."""
  num_classes: int = 2
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
                       name=f'stage{i + 1}_block{j + 1}', **self.impl_kwargs())(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, name='head')(x)


def resnet18(num_classes: int, **kwargs) -> ResNet:
  return ResNet(num_classes=num_classes, stage_sizes=(2, 2, 2, 2), **kwargs)
