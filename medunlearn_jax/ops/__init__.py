"""Hand-written kernels-as-JAX: a convolution and a GroupNorm with custom VJPs, the `'native'` model layers.

Models use them only when a run resolves `config.model.kernels` to 'native' (`models.layers`: one XLA:CPU
device, float32); every other run uses stock Flax layers. Both are drop-in replacements for
`flax.linen.Conv` / `flax.linen.GroupNorm` (same parameter names, shapes, initialisers and float32 numerics
within rounding) whose backward passes are cheaper on XLA:CPU, with native AVX-512 kernels (`ops.native`,
XLA FFI, built from source on first use) for convolutions and GroupNorm. See `benchmarks/PERF_NOTES.md` for the measurements that chose them.
"""
from medunlearn_jax.ops.conv import Conv, conv2d
from medunlearn_jax.ops.norm import GroupNorm, group_norm

__all__ = ['Conv', 'conv2d', 'GroupNorm', 'group_norm']
