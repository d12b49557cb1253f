"""Hand-written kernels-as-JAX for the step engine: a convolution and a GroupNorm with custom VJPs.

Both are drop-in replacements for `flax.linen.Conv` / `flax.linen.GroupNorm` (same parameter names, shapes,
initialisers and float32 numerics within rounding) whose backward passes are cheaper on XLA:CPU; the
convolution's weight gradient can run in a native AVX-512 kernel (`ops.native`, XLA FFI, built from source on
first use). See `benchmarks/PERF_NOTES.md` for the measurements that chose them.
"""
from medunlearn_jax.ops.conv import Conv, conv2d
from medunlearn_jax.ops.norm import GroupNorm, group_norm

__all__ = ['Conv', 'conv2d', 'GroupNorm', 'group_norm']
