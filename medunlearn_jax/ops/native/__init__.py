"""Native XLA:CPU kernels, called through the XLA FFI (`jax.ffi.ffi_call`), built from source on first use.

`conv_wgrad.cc` holds the weight gradient of a 2-D convolution (NHWC / HWIO, float32, AVX-512), which
XLA's own convolution computes 1.7-2x slower than oneDNN on 28x28 feature maps (benchmarks/PERF_NOTES.md).
The shared library is compiled with the system C++ compiler (`$CXX`, default `g++`) against the FFI headers
that ship with jaxlib, into `$MEDUNLEARN_NATIVE_CACHE` (default `~/.cache/medunlearn_jax`), keyed by the
source and jaxlib version; no binary is downloaded or committed. When there is no compiler, the CPU lacks
AVX-512, or `MEDUNLEARN_NATIVE=0` is set, `available()` is False and callers keep XLA's convolution.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

from absl import logging
import jax
import jaxlib
import numpy as np

_SOURCE = pathlib.Path(__file__).with_name('conv_wgrad.cc')
_TARGET = 'medunlearn_conv_wgrad'


def _cpu_has_avx512() -> bool:
  try:
    flags = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    return False
  return ' avx512f ' in flags.replace('\n', ' ') + ' '


def _build(cache: pathlib.Path) -> pathlib.Path:
  source = _SOURCE.read_bytes()
  key = hashlib.sha256(source + jaxlib.__version__.encode()).hexdigest()[:16]
  out = cache / f'libmedunlearn_conv_wgrad_{key}.so'
  if out.exists():
    return out
  compiler = os.environ.get('CXX', 'g++')
  if shutil.which(compiler) is None:
    raise FileNotFoundError(f'no C++ compiler {compiler!r}')
  include = pathlib.Path(jaxlib.__file__).parent / 'include'
  cache.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache) as tmp:
    # Built under a temporary name and renamed: concurrent processes never load a half-written library.
    partial = pathlib.Path(tmp) / out.name
    subprocess.run([compiler, '-O3', '-march=x86-64-v4', '-std=c++17', '-shared', '-fPIC', '-w',
                    f'-I{include}', str(_SOURCE), '-o', str(partial)], check=True, capture_output=True, text=True)
    os.replace(partial, out)
  for stale in cache.glob('libmedunlearn_conv_wgrad_*.so'):
    if stale != out:  # Builds of older sources (a process that loaded one keeps its mapping).
      stale.unlink(missing_ok=True)
  return out


@functools.cache
def available() -> bool:
  """Whether the native weight-gradient kernel is built, loaded and registered for XLA:CPU."""
  if os.environ.get('MEDUNLEARN_NATIVE', '1').lower() in ('0', 'false', 'off', 'no'):
    return False
  if not _cpu_has_avx512():
    return False
  cache = pathlib.Path(os.environ.get('MEDUNLEARN_NATIVE_CACHE', pathlib.Path.home() / '.cache' / 'medunlearn_jax'))
  try:
    lib = ctypes.cdll.LoadLibrary(str(_build(cache)))
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.MedunlearnConvWgrad), platform='cpu')
  except (OSError, subprocess.CalledProcessError, AttributeError) as e:
    detail = getattr(e, 'stderr', '') or e
    logging.warning('native convolution kernel unavailable, using XLA\'s convolution: %s', str(detail)[:500])
    return False
  return True


def supports(x_shape, dy_shape, dtype) -> bool:
  """Whether `conv2d` should use the kernel: float32, Cin % 4 == 0, Cout % 64 == 0, XLA:CPU with one
  device. (Around a custom call, XLA's partitioner would gather a batch sharded over several devices to each
  of them; multi-device CPU meshes, which are mostly tests with fake devices, keep XLA's convolution.)"""
  return (np.dtype(dtype) == np.float32 and x_shape[-1] % 4 == 0 and dy_shape[-1] % 64 == 0
          and jax.default_backend() == 'cpu' and jax.device_count() == 1 and available())


def conv_wgrad(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int], stride: int,
               pad: tuple[int, int]) -> jax.Array:
  """Weight gradient (KH, KW, Cin, Cout) of `lax.conv_general_dilated(x, w, (stride, stride), padding)` in
  NHWC/HWIO with top/left padding `pad`, from its input `x` (N, H, W, Cin) and output gradient `dy`."""
  out = jax.ShapeDtypeStruct((*kernel_hw, x.shape[-1], dy.shape[-1]), np.float32)
  # Under vmap (model populations) the kernel runs once per model.
  call = jax.ffi.ffi_call(_TARGET, out, vmap_method='sequential')
  return call(x, dy, stride=np.int64(stride), pad_top=np.int64(pad[0]), pad_left=np.int64(pad[1]))
