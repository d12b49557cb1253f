"""GroupNorm over NHWC tensors with a hand-written VJP.

The stock `flax.linen.GroupNorm` computes the variance as E[x^2] - E[x]^2 (one pass) and leaves the backward
pass to autodiff, which on XLA:CPU re-derives the statistics through several reductions. This version:

* computes statistics in float32 from moments shifted by a sample of each group (one pass, like Flax's
  E[x^2] - E[x]^2, but without its cancellation when |mean| >> std: closer to a float64 reference);
* saves only the input and the per-(example, group) mean and reciprocal standard deviation;
* computes the input gradient in closed form, dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with
  g = dy * scale, i.e. two reductions and one elementwise pass.

For float32 on single-device XLA:CPU both passes run as the native kernels of `ops.native` (`group_norm.cc`,
the same formulas with per-channel shifts), since XLA:CPU lowers these reductions to reduce-window trees that
run 5-10x below memory speed; elsewhere (bfloat16, GPUs, device meshes) the XLA version below runs.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from medunlearn_jax.ops import native


def _grouped(x: jax.Array, groups: int) -> jax.Array:
  """(B, ..., C) -> (B, N, G, C/G) in float32 (a free reshape for row-major NHWC)."""
  return x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups).astype(jnp.float32)


def _stats(xg: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  # Shifted one-pass moments: one fused pass over the data (as fast as Flax's E[x^2] - E[x]^2) without its
  # cancellation, since the shift (each group's first element) is a sample of the group: the error scales
  # with (mean - shift)^2 / var = O(1) instead of mean^2 / var.
  shift = jax.lax.stop_gradient(xg[:, :1, :, :1])
  d = xg - shift
  m1 = jnp.mean(d, axis=(1, 3), keepdims=True)
  m2 = jnp.mean(jnp.square(d), axis=(1, 3), keepdims=True)
  var = jnp.maximum(m2 - jnp.square(m1), 0.0)
  return shift + m1, jax.lax.rsqrt(var + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float = 1e-6) -> jax.Array:
  """GroupNorm of `x` (B, ..., C) with per-channel `scale` and `bias` (C,); the output has x's dtype."""
  return _fwd(x, scale, bias, groups, eps)[0]


def _fwd(x, scale, bias, groups, eps):
  if native.supports_norm(x.shape, x.dtype):
    x3 = x.reshape(x.shape[0], -1, x.shape[-1])
    y, mean, rstd = native.group_norm_fwd(x3, scale.astype(jnp.float32), bias.astype(jnp.float32), groups, eps)
    return y.reshape(x.shape), (x, scale, bias, mean, rstd)
  xg = _grouped(x, groups)
  mean, rstd = _stats(xg, eps)
  shape = (groups, x.shape[-1] // groups)
  y = (xg - mean) * rstd * scale.astype(jnp.float32).reshape(shape) + bias.astype(jnp.float32).reshape(shape)
  return y.reshape(x.shape).astype(x.dtype), (x, scale, bias, mean, rstd)


def _bwd(groups, eps, res, dy):
  del eps
  x, scale, bias, mean, rstd = res
  if mean.ndim == 2:  # Statistics of the native forward pass.
    x3 = x.reshape(x.shape[0], -1, x.shape[-1])
    dx, dscale, dbias = native.group_norm_bwd(x3, dy.reshape(x3.shape).astype(jnp.float32),
                                              scale.astype(jnp.float32), mean, rstd)
    return dx.reshape(x.shape), dscale.astype(scale.dtype), dbias.astype(bias.dtype)
  shape = (groups, x.shape[-1] // groups)
  xhat = (_grouped(x, groups) - mean) * rstd
  dyg = _grouped(dy, groups)
  dbias = jnp.sum(dyg, axis=(0, 1)).reshape(bias.shape)
  dscale = jnp.sum(dyg * xhat, axis=(0, 1)).reshape(scale.shape)
  g = dyg * scale.astype(jnp.float32).reshape(shape)
  m1 = jnp.mean(g, axis=(1, 3), keepdims=True)
  m2 = jnp.mean(g * xhat, axis=(1, 3), keepdims=True)
  dx = rstd * (g - m1 - xhat * m2)
  return dx.reshape(x.shape).astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


group_norm.defvjp(_fwd, _bwd)


def reference_group_norm(x, scale, bias, groups: int, eps: float = 1e-6):
  """The same function written plainly (autodiff backward); the oracle for tests."""
  xg = _grouped(x, groups)
  mean, rstd = _stats(xg, eps)
  shape = (groups, x.shape[-1] // groups)
  y = (xg - mean) * rstd * scale.reshape(shape) + bias.reshape(shape)
  return y.reshape(x.shape).astype(x.dtype)


class GroupNorm(nn.Module):
  """Drop-in for `nn.GroupNorm(num_groups=...)` on NHWC inputs: parameters 'scale' (ones) and 'bias'
  (zeros) of shape (C,) in float32, epsilon 1e-6, output in `dtype`."""
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f'Number of groups ({self.num_groups}) does not divide the number of channels ({c}).')
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    return group_norm(x.astype(self.dtype), scale, bias, self.num_groups, self.epsilon)
