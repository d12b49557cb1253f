"""2-D convolution (NHWC input, HWIO kernel) with a custom VJP shaped for XLA:CPU.

`jax.grad` of `lax.conv_general_dilated` gives an input gradient that, for stride 2, is a convolution over a
zero-dilated output gradient (3/4 of its multiply-adds hit zeros), and a weight gradient as a convolution
with the batch as the contraction dimension. Here:

* input gradient, stride 1: a stride-1 convolution of dy with the spatially flipped, in/out-swapped kernel;
* input gradient, stride s > 1: split by output parity into s*s small stride-1 convolutions of dy with the
  kernel taps that reach each parity (for a 3x3 stride-2 kernel: 1x1, 1x2, 2x1 and 2x2 sub-kernels), then
  interleaved; no multiply-add hits an inserted zero;
* weight gradient: `wgrad='conv'` uses XLA's own weight-gradient convolution; `wgrad='taps'` computes one
  (Ci x B*H*W) @ (B*H*W x Co) matrix product per kernel tap; `wgrad='native'` calls the AVX-512 kernel of
  `ops.native` (XLA FFI; skips taps on padding); `wgrad='auto'` (the ResNet default) takes 'native' where
  that kernel supports the shapes (it measured faster than XLA's on every ResNet-18 layer, down to 4x4
  maps; benchmarks/PERF_NOTES.md), else 'conv'; `wgrad_chunks=n` accumulates 'conv'/'taps' over n batch chunks.

`barrier=True` puts `lax.optimization_barrier` on the convolution input, so that the tensor saved for the
backward pass is materialised once, instead of XLA recomputing the producer chain (GroupNorm, ReLU,
residual add) inside the backward pass's transposes.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from medunlearn_jax.ops import native

_DN = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, w, stride: int, pad: Sequence[tuple[int, int]]):
  return lax.conv_general_dilated(x, w, (stride, stride), tuple(pad), dimension_numbers=_DN)


def _conv_fast(x, w, stride: int, pad: Sequence[tuple[int, int]], mode: str):
  """`_conv`, or for stride 1 the native kernel when `mode` is 'native', or 'auto' and it supports the
  shapes (float32, Cin >= 16, Cout % 64 == 0, single-device XLA:CPU)."""
  if stride == 1 and not native.is_disabled() and (
      mode == 'native' or (mode == 'auto' and native.supports_fwd(x.shape, w.shape, x.dtype))):
    return native.conv_fwd(x, w, tuple(pad))
  if mode not in ('auto', 'native', 'xla'):
    raise ValueError(f"unknown convolution mode {mode!r}; choose 'auto', 'native' or 'xla'")
  return _conv(x, w, stride, pad)


def _taps(k: int, stride: int, pad: int, parity: int) -> tuple[list[int], int]:
  """Kernel taps reaching input rows of `parity` (mod stride), ordered by output offset, and the lowest
  offset: input row stride*i + parity receives dy[i + d] * w[tap] with d = (parity + pad - tap) / stride."""
  taps = [t for t in range(k) if (parity + pad - t) % stride == 0]
  taps.sort(key=lambda t: (parity + pad - t) // stride)
  d0 = (parity + pad - taps[0]) // stride if taps else 0
  return taps, d0


def _input_grad(dy, w, x_shape, stride: int, pad: int, mode: str = 'xla'):
  kh, kw = w.shape[:2]
  wt = jnp.swapaxes(w, 2, 3)  # HWOI: contracts over the output channels of dy.
  if stride == 1:
    wf = wt[::-1, ::-1]
    hi_h = x_shape[1] - 1 + pad - (dy.shape[1] - 1)  # Keeps the output at the input's size.
    hi_w = x_shape[2] - 1 + pad - (dy.shape[2] - 1)
    return _conv_fast(dy, wf, 1, [(kh - 1 - pad, hi_h), (kw - 1 - pad, hi_w)], mode)
  h, wd = x_shape[1], x_shape[2]
  nh, nw = -(-h // stride), -(-wd // stride)
  rows = []
  for a in range(stride):
    cols = []
    taps_h, dh = _taps(kh, stride, pad, a)
    for b in range(stride):
      taps_w, dw = _taps(kw, stride, pad, b)
      if not taps_h or not taps_w:
        cols.append(jnp.zeros((dy.shape[0], nh, nw, x_shape[3]), dy.dtype))
        continue
      sub = wt[jnp.asarray(taps_h)][:, jnp.asarray(taps_w)]
      # out[i] = sum_t dy[i + dh + t] * sub[t], i in [0, nh): padding (-dh, nh - 1 + dh + len - 1 - (Ho - 1)).
      pads = [(-dh, nh + dh + len(taps_h) - 1 - dy.shape[1]), (-dw, nw + dw + len(taps_w) - 1 - dy.shape[2])]
      cols.append(_conv_fast(dy, sub, 1, pads, mode))
    rows.append(jnp.stack(cols, axis=3))  # (B, nh, nw, s, C)
  dx = jnp.stack(rows, axis=2)  # (B, nh, s, nw, s, C)
  dx = dx.reshape(dy.shape[0], nh * stride, nw * stride, x_shape[3])
  return dx[:, :h, :wd]


def _weight_grad(x, dy, w_shape, stride: int, pad: int, mode: str, chunks: int):
  kh, kw, ci, co = w_shape
  pads = [(pad, pad), (pad, pad)]
  if mode == 'auto':
    mode = 'native' if native.supports(x.shape, dy.shape, x.dtype) else 'conv'
  if mode == 'native' and native.is_disabled():
    mode = 'conv'
  if mode == 'native':
    return native.conv_wgrad(x, dy, (kh, kw), stride, (pad, pad))
  if mode not in ('conv', 'taps'):
    raise ValueError(f"unknown wgrad mode {mode!r}; choose 'auto', 'native', 'conv' or 'taps'")

  def one(xc, dyc):
    if mode == 'conv':
      return jax.vjp(lambda w: _conv(xc, w, stride, pads), jnp.zeros(w_shape, xc.dtype))[1](dyc)[0]
    xp = jnp.pad(xc, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else xc
    ho, wo = dyc.shape[1], dyc.shape[2]
    dy2 = dyc.reshape(-1, co)
    out = []
    for i in range(kh):
      for j in range(kw):
        xs = lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, ci),
                       (1, stride, stride, 1))
        out.append(jnp.dot(xs.reshape(-1, ci).T, dy2, preferred_element_type=jnp.float32))
    return jnp.stack(out).reshape(w_shape)

  b = x.shape[0]
  if chunks <= 1 or b % chunks:
    return one(x, dy).astype(jnp.float32)
  xs = x.reshape(chunks, b // chunks, *x.shape[1:])
  dys = dy.reshape(chunks, b // chunks, *dy.shape[1:])

  def body(acc, xy):
    return acc + one(*xy).astype(jnp.float32), None

  return lax.scan(body, jnp.zeros(w_shape, jnp.float32), (xs, dys))[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, pad: int = 0, wgrad: str = 'conv',
           wgrad_chunks: int = 1, conv: str = 'xla') -> jax.Array:
  """`lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2)` in NHWC/HWIO, custom backward.

  `conv` picks the stride-1 convolutions of the forward pass and of the input gradient: 'xla', 'native'
  (`ops.native.conv_fwd`) or 'auto' (native where supported); `wgrad` the weight gradient (module docstring).
  """
  return _conv_fast(x, w, stride, [(pad, pad), (pad, pad)], conv)


def _fwd(x, w, stride, pad, wgrad, wgrad_chunks, conv):
  return conv2d(x, w, stride, pad, wgrad, wgrad_chunks, conv), (x, w)


def _bwd(stride, pad, wgrad, wgrad_chunks, conv, res, dy):
  x, w = res
  dx = _input_grad(dy, w, x.shape, stride, pad, conv).astype(x.dtype)
  dw = _weight_grad(x, dy, w.shape, stride, pad, wgrad, wgrad_chunks).astype(w.dtype)
  return dx, dw


conv2d.defvjp(_fwd, _bwd)


class Conv(nn.Module):
  """Drop-in for `nn.Conv(features, (k, k), (s, s), padding=p, use_bias=False)` on NHWC inputs: parameter
  'kernel' (k, k, Cin, features), LeCun-normal initialised, float32; compute in `dtype`.

  impl: 'xla' (plain `lax.conv_general_dilated`, autodiff backward) or 'custom' (`conv2d`'s VJP, with
  `conv` / `wgrad` choosing its kernels).
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: int = 0
  dtype: jnp.dtype = jnp.float32
  impl: str = 'custom'
  wgrad: str = 'conv'
  wgrad_chunks: int = 1
  barrier: bool = False
  conv: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.barrier:
      x = lax.optimization_barrier(x)
    if self.impl == 'xla':
      return _conv(x, kernel, self.strides, [(self.padding, self.padding)] * 2)
    if self.impl != 'custom':
      raise ValueError(f'unknown convolution impl {self.impl!r}')
    chunks = self.wgrad_chunks if x.shape[1] * x.shape[2] >= 28 * 28 else 1
    return conv2d(x, kernel, self.strides, self.padding, self.wgrad, chunks, self.conv)
