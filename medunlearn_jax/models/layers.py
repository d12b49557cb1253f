"""The layers a model is built from, chosen once per run from `config.model.kernels`.

* `'xla'`: stock `flax.linen.Conv` and `flax.linen.GroupNorm`, differentiated by JAX's autodiff. Programs
  hold no custom call, no custom VJP and no optimization barrier, so they run on every backend and mesh and
  support forward-mode AD (`jax.jvp`, Hessian-vector products).
* `'native'`: the `medunlearn_jax.ops` layers (custom-VJP convolution and GroupNorm, optimization barriers)
  with the AVX-512 kernels of `ops.native`, an accelerator for single-device XLA:CPU float32 runs only. Same
  parameter tree and initialisers as `'xla'`; the same function to float32 rounding
  (`tests/test_native_layers.py` states the tolerance).
* `'auto'` (the run default): `'native'` exactly where it is valid and was measured faster (one XLA:CPU
  device in the whole run, float32, a CPU with AVX-512 and a C++ compiler that builds the kernels, a model
  whose native layers measured faster, and no algorithm of the run that needs forward-mode AD), `'xla'`
  everywhere else: every GPU/TPU run and every multi-device mesh.

`resolve` turns the requested value into the layers used; `stock_layers()` makes programs traced inside it
use stock layers whatever a model was built with (the step engine counts FLOPs there, since XLA's cost
analysis cannot see into custom calls).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np

from medunlearn_jax import errors

KERNELS = ('auto', 'xla', 'native')
_local = threading.local()


@contextlib.contextmanager
def stock_layers():
  """Models traced inside this context use stock Flax layers, whatever their `kernels` field says."""
  before = getattr(_local, 'stock', False)
  _local.stock = True
  try:
    yield
  finally:
    _local.stock = before


def _native_now(kernels: str) -> bool:
  if kernels not in ('xla', 'native'):
    raise ValueError(f"model layers must be resolved to 'xla' or 'native', got {kernels!r} (see layers.resolve)")
  return kernels == 'native' and not getattr(_local, 'stock', False)


def native_unavailable_reason(dtype: str, devices: Sequence[jax.Device] | None = None) -> str | None:
  """Why the native layers cannot serve a run with this compute dtype on these devices (None: they can)."""
  devices = list(devices) if devices is not None else jax.devices()
  if devices[0].platform != 'cpu':
    return f'the run is on {devices[0].platform.upper()}, and the native kernels are XLA:CPU kernels'
  if len(devices) != 1:
    return f'the run uses {len(devices)} devices, and the native kernels serve one XLA:CPU device only'
  if np.dtype(dtype) != np.float32:
    return f'the compute dtype is {dtype}, and the native kernels are float32 only'
  from medunlearn_jax.ops import native  # pylint: disable=g-import-not-at-top  # Only CPU runs import it.
  if not native.available():
    return ('the native kernels could not be built or loaded here (they need an AVX-512 CPU and a C++ '
            'compiler; MEDUNLEARN_NATIVE=0 turns them off)')
  return None


def resolve(requested: str, *, dtype: str = 'float32', native_faster: bool = True,
            forward_mode: Sequence[str] = (), devices: Sequence[jax.Device] | None = None) -> str:
  """The layers a run uses ('xla' or 'native') for the requested `config.model.kernels`.

  Args:
    requested: 'auto', 'xla' or 'native'.
    dtype: the compute dtype.
    native_faster: whether this model's native layers were measured faster than its stock ones on CPU
      ('auto' picks them only then).
    forward_mode: names of the run's algorithms that need forward-mode AD (custom VJPs cannot be
      differentiated forward): 'auto' then picks 'xla', and 'native' is an error.
    devices: every device of the run (default: all devices of all processes).

  Raises:
    ConfigError: an unknown value, or 'native' where it cannot run.
  """
  if requested not in KERNELS:
    raise errors.ConfigError(f'model.kernels must be one of {KERNELS}, got {requested!r}')
  if requested == 'xla':
    return 'xla'
  if forward_mode:
    if requested == 'native':
      raise errors.ConfigError(
          f"model.kernels='native' cannot serve {', '.join(forward_mode)}, which needs forward-mode AD "
          "(the native layers have custom VJPs); use model.kernels='auto' or 'xla'")
    return 'xla'
  reason = native_unavailable_reason(dtype, devices)
  if requested == 'native':
    if reason:
      raise errors.ConfigError(f"model.kernels='native' is not valid here: {reason}; use 'auto' or 'xla'")
    return 'native'
  return 'native' if reason is None and native_faster else 'xla'


def conv(kernels: str, features: int, kernel: int, strides: int, padding: int, dtype, name: str) -> nn.Module:
  """A bias-free k x k convolution on NHWC inputs with symmetric `padding`, float32 parameter 'kernel'."""
  if _native_now(kernels):
    from medunlearn_jax import ops  # pylint: disable=g-import-not-at-top
    return ops.Conv(features, kernel, strides, padding, dtype, impl='custom', wgrad='auto', barrier=True,
                    conv='auto', name=name)
  return nn.Conv(features, (kernel, kernel), (strides, strides), padding=[(padding, padding)] * 2,
                 use_bias=False, dtype=dtype, name=name)


def group_norm(kernels: str, groups: int, dtype, name: str) -> nn.Module:
  """GroupNorm over NHWC inputs: parameters 'scale' and 'bias' (C,), epsilon 1e-6."""
  if _native_now(kernels):
    from medunlearn_jax import ops  # pylint: disable=g-import-not-at-top
    return ops.GroupNorm(num_groups=groups, dtype=dtype, name=name)
  return nn.GroupNorm(num_groups=groups, dtype=dtype, name=name)


class Layered:
  """Mixin of this package's models: the layers selected by the model's `kernels` field ('xla'/'native')."""
  kernels: str

  def conv(self, features: int, kernel: int, strides: int, padding: int, dtype, name: str) -> nn.Module:
    return conv(self.kernels, features, kernel, strides, padding, dtype, name)

  def norm(self, groups: int, dtype, name: str) -> nn.Module:
    return group_norm(self.kernels, groups, dtype, name)
