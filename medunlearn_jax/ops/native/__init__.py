"""Native XLA:CPU kernels, called through the XLA FFI (`jax.ffi.ffi_call`), built from source on first use.

`conv_wgrad.cc` holds the weight gradient of a 2-D convolution (NHWC / HWIO, float32, AVX-512), which
XLA's own convolution computes 1.7-2x slower than oneDNN on 28x28 feature maps; `conv_fwd.cc` a stride-1
convolution that skips padded taps, for small maps where XLA multiplies many zeros; `group_norm.cc` GroupNorm's
forward and backward passes, whose reductions XLA:CPU runs 5-10x below memory speed (benchmarks/PERF_NOTES.md).
The shared library is compiled with the system C++ compiler (`$CXX`, default `g++`) against the FFI headers
that ship with jaxlib, into `$MEDUNLEARN_NATIVE_CACHE` (default `~/.cache/medunlearn_jax`), keyed by the
sources, the compiler (path and version), the flags and the jaxlib version, with its sha256 recorded beside it:
a cached library is loaded only if it still has that hash (else it is rebuilt), and only libraries this
project built (those with a recorded hash) are ever deleted. No binary is downloaded or committed. When there is no compiler, the CPU lacks
AVX-512, or `MEDUNLEARN_NATIVE=0` is set, `available()` is False and callers keep XLA's convolution.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

from absl import logging
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

_SOURCES = tuple(pathlib.Path(__file__).with_name(n) for n in ('conv_wgrad.cc', 'conv_fwd.cc', 'group_norm.cc'))
_HEADERS = (pathlib.Path(__file__).with_name('parallel.h'),)
TARGET = 'medunlearn_conv_wgrad'
FWD_TARGET = 'medunlearn_conv_fwd'
GN_FWD_TARGET = 'medunlearn_group_norm_fwd'
GN_BWD_TARGET = 'medunlearn_group_norm_bwd'
TARGETS = (TARGET, FWD_TARGET, GN_FWD_TARGET, GN_BWD_TARGET)
_local = threading.local()


@contextlib.contextmanager
def disabled():
  """Programs traced within this context use XLA's convolution and GroupNorm instead of the kernels, whatever
  mode asked for them (the `ops` layers' XLA versions, e.g. for tests that compare with XLA's own ops)."""
  before = getattr(_local, 'off', False)
  _local.off = True
  try:
    yield
  finally:
    _local.off = before


def _cpu_has_avx512() -> bool:
  try:
    flags = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    return False
  return ' avx512f ' in flags.replace('\n', ' ') + ' '


_FLAGS = ('-O3', '-march=x86-64-v4', '-std=c++17', '-shared', '-fPIC', '-w')
_PREFIX = 'libmedunlearn_native_'


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _compiler_identity(compiler: str) -> bytes:
  """The compiler's path and version banner: a library built by another compiler is another library."""
  path = shutil.which(compiler)
  if path is None:
    raise FileNotFoundError(f'no C++ compiler {compiler!r}')
  banner = subprocess.run([path, '--version'], capture_output=True, text=True, check=False).stdout
  return f'{os.path.realpath(path)}\n{banner}'.encode()


def _build(cache: pathlib.Path) -> pathlib.Path:
  """The shared library for these sources, compiler, flags and jaxlib: loaded from the cache only when the
  sha256 recorded beside it when this project built it still matches, else (re)built."""
  compiler = os.environ.get('CXX', 'g++')
  source = b''.join(f.read_bytes() for f in _SOURCES + _HEADERS)
  key = hashlib.sha256(b'\0'.join([source, _compiler_identity(compiler), ' '.join(_FLAGS).encode(),
                                    jaxlib.__version__.encode()])).hexdigest()[:16]
  out = cache / f'{_PREFIX}{key}.so'
  digest = out.with_suffix('.so.sha256')
  if out.exists() and digest.exists() and digest.read_text().strip() == _sha256(out):
    return out
  if out.exists():
    logging.warning('native kernel library %s does not match the hash recorded when it was built; rebuilding', out)
  include = pathlib.Path(jaxlib.__file__).parent / 'include'
  cache.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache) as tmp:
    # Built under a temporary name and renamed: concurrent processes never load a half-written library.
    partial = pathlib.Path(tmp) / out.name
    subprocess.run([compiler, *_FLAGS, f'-I{include}', *map(str, _SOURCES), '-o', str(partial)], check=True,
                   capture_output=True, text=True)
    partial_digest = pathlib.Path(tmp) / digest.name
    partial_digest.write_text(_sha256(partial) + '\n')
    os.replace(partial, out)
    os.replace(partial_digest, digest)
  for stale in cache.glob(f'{_PREFIX}*.so.sha256'):
    library = stale.with_suffix('')
    if library != out:  # Only what this project built (it wrote the hash); a process that loaded one keeps it.
      library.unlink(missing_ok=True)
      stale.unlink(missing_ok=True)
  return out


@functools.cache
def available() -> bool:
  """Whether the native kernels are built, loaded and registered for XLA:CPU."""
  if os.environ.get('MEDUNLEARN_NATIVE', '1').lower() in ('0', 'false', 'off', 'no'):
    return False
  if not _cpu_has_avx512():
    return False
  cache = pathlib.Path(os.environ.get('MEDUNLEARN_NATIVE_CACHE', pathlib.Path.home() / '.cache' / 'medunlearn_jax'))
  try:
    lib = ctypes.cdll.LoadLibrary(str(_build(cache)))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.MedunlearnConvWgrad), platform='cpu')
    jax.ffi.register_ffi_target(FWD_TARGET, jax.ffi.pycapsule(lib.MedunlearnConvFwd), platform='cpu')
    jax.ffi.register_ffi_target(GN_FWD_TARGET, jax.ffi.pycapsule(lib.MedunlearnGroupNormFwd), platform='cpu')
    jax.ffi.register_ffi_target(GN_BWD_TARGET, jax.ffi.pycapsule(lib.MedunlearnGroupNormBwd), platform='cpu')
  except (OSError, subprocess.CalledProcessError, AttributeError) as e:
    detail = getattr(e, 'stderr', '') or e
    logging.warning('native kernels unavailable, using XLA\'s convolution and GroupNorm: %s', str(detail)[:500])
    return False
  return True


def is_disabled() -> bool:
  """Whether the current thread is inside `disabled()`."""
  return getattr(_local, 'off', False)


def _single_cpu_device() -> bool:
  """Kernels on: not inside `disabled()`, XLA:CPU with one device, library built."""
  return not is_disabled() and jax.default_backend() == 'cpu' and jax.device_count() == 1 and available()


def supports(x_shape, dy_shape, dtype) -> bool:
  """Whether `conv2d` should use the kernel: float32, Cin % 4 == 0, Cout % 64 == 0, XLA:CPU with one
  device. (Around a custom call, XLA's partitioner would gather a batch sharded over several devices to each
  of them; multi-device CPU meshes, which are mostly tests with fake devices, keep XLA's convolution.)"""
  return (np.dtype(dtype) == np.float32 and x_shape[-1] % 4 == 0 and dy_shape[-1] % 64 == 0
          and _single_cpu_device())


def conv_wgrad(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int], stride: int,
               pad: tuple[int, int]) -> jax.Array:
  """Weight gradient (KH, KW, Cin, Cout) of `lax.conv_general_dilated(x, w, (stride, stride), padding)` in
  NHWC/HWIO with top/left padding `pad`, from its input `x` (N, H, W, Cin) and output gradient `dy`."""
  out = jax.ShapeDtypeStruct((*kernel_hw, x.shape[-1], dy.shape[-1]), np.float32)
  # Under vmap (model populations) the kernel runs once per model.
  call = jax.ffi.ffi_call(TARGET, out, vmap_method='sequential')
  return call(x, dy, stride=np.int64(stride), pad_top=np.int64(pad[0]), pad_left=np.int64(pad[1]))


def supports_fwd(x_shape, w_shape, dtype) -> bool:
  """Whether `conv_fwd` should serve a stride-1 convolution: float32, Cin >= 16 (the register tile reloads
  its accumulators once per tap and Cin), Cout % 64 == 0, XLA:CPU with one device."""
  return np.dtype(dtype) == np.float32 and x_shape[-1] >= 16 and w_shape[-1] % 64 == 0 and _single_cpu_device()


def conv_fwd(x: jax.Array, w: jax.Array, pads) -> jax.Array:
  """`lax.conv_general_dilated(x, w, (1, 1), pads)` in NHWC/HWIO, float32; pads ((top, bottom), (left,
  right)) may be negative (crops), as the input gradients of strided convolutions need."""
  (pt, pb), (pl, pr) = pads
  ho = x.shape[1] + pt + pb - w.shape[0] + 1
  wo = x.shape[2] + pl + pr - w.shape[1] + 1
  out = jax.ShapeDtypeStruct((x.shape[0], ho, wo, w.shape[3]), np.float32)
  call = jax.ffi.ffi_call(FWD_TARGET, out, vmap_method='sequential')
  kh, kw, ci, co = w.shape
  # Packed so that each block of 64 output channels is contiguous: with HWIO rows Cout apart the kernel's
  # weight reads were strided by up to 2 KiB and it ran 3-4x slower on 512-channel layers (PERF_NOTES.md).
  packed = w.reshape(kh, kw, ci, co // 64, 64).transpose(3, 0, 1, 2, 4)
  return call(x, packed, pad_top=np.int64(pt), pad_left=np.int64(pl))


def supports_norm(x_shape, dtype) -> bool:
  """Whether `group_norm_fwd` / `group_norm_bwd` should serve a GroupNorm: float32 on XLA:CPU with one
  device (the same gates as the convolution kernels)."""
  return np.dtype(dtype) == np.float32 and len(x_shape) >= 2 and _single_cpu_device()


def group_norm_fwd(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float):
  """GroupNorm of `x` (B, N, C) float32: returns (y, mean, rstd), the statistics of shape (B, groups)."""
  stat = jax.ShapeDtypeStruct((x.shape[0], groups), np.float32)
  call = jax.ffi.ffi_call(GN_FWD_TARGET, (jax.ShapeDtypeStruct(x.shape, np.float32), stat, stat),
                          vmap_method='sequential')
  return call(x, scale, bias, eps=np.float32(eps))


def group_norm_bwd(x, dy, scale, mean, rstd):
  """Backward of `group_norm_fwd`: returns (dx, dscale, dbias) for x (B, N, C)."""
  b, _, c = x.shape
  part = jax.ShapeDtypeStruct((b, c), np.float32)
  call = jax.ffi.ffi_call(GN_BWD_TARGET, (jax.ShapeDtypeStruct(x.shape, np.float32), part, part),
                          vmap_method='sequential')
  dx, dscale, dbias = call(x, dy, scale, mean, rstd)
  return dx, jnp.sum(dscale, axis=0), jnp.sum(dbias, axis=0)
