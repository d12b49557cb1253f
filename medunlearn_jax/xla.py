"""XLA compiler options for the step engine's compiled programs, chosen per program kind and compute dtype.

bfloat16 programs on XLA:CPU enable the oneDNN custom call, which rewrites their convolutions to oneDNN.
float32 programs use XLA's defaults. (Earlier versions sent float32 convolutions back to XLA's Eigen kernels
with `xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`; in jaxlib 0.12.0.1 that option
miscompiles the backward pass of the XLA GroupNorm on 128- and 512-channel maps (input gradients off by up to
30 % of their range, deterministic; benchmarks/PERF_NOTES.md), and with the native kernels of `ops.native`
serving the convolutions and GroupNorm it no longer made a measurable difference.) Options only choose a
backend for the same HLO; `tests/test_ops.py` checks equal numerics, including that GroupNorm case.

`MEDUNLEARN_XLA_OPTIONS=default` turns every option off (XLA's defaults); options that this jaxlib does not
know are dropped with a warning rather than failing the compile.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np

_ONEDNN = 'xla_cpu_experimental_onednn_custom_call'

# Program kind -> compute dtype -> options (XLA:CPU only). Chosen by measurement (PERF_NOTES.md).
_CPU_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    'train': {'bfloat16': {_ONEDNN: True}},  # Rewrites bf16 convolutions to oneDNN.
    'eval': {'bfloat16': {_ONEDNN: True}},
}

_rejected: set[str] = set()


def compiler_options(kind: str = 'train', dtype: Any = 'float32', platform: str | None = None
                     ) -> dict[str, Any]:
  """Options for a program of `kind` ('train': a step with a backward pass; 'eval': forward only)."""
  if os.environ.get('MEDUNLEARN_XLA_OPTIONS', '').lower() in ('default', 'off', 'none', '0'):
    return {}
  platform = platform or jax.default_backend()
  if platform != 'cpu':
    return {}
  if kind not in _CPU_OPTIONS:
    raise ValueError(f'unknown program kind {kind!r}; choose one of {sorted(_CPU_OPTIONS)}')
  name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
  opts = dict(_CPU_OPTIONS[kind].get(name, {}))
  return {k: v for k, v in opts.items() if k not in _rejected}


def lowered_dtype(lowered) -> str:
  """'bfloat16' when the lowered program computes in bfloat16 anywhere, else 'float32'."""
  try:
    return 'bfloat16' if 'bf16' in lowered.as_text() else 'float32'
  except Exception:  # pylint: disable=broad-except
    return 'float32'


def compile(lowered, kind: str = 'train', dtype: Any = None,  # pylint: disable=redefined-builtin
            options: Mapping[str, Any] | None = None):
  """`lowered.compile(compiler_options=...)` with the options for `kind` and the compute dtype (read
  from the program when None), retrying without options this jaxlib rejects."""
  if options is None:
    options = compiler_options(kind, lowered_dtype(lowered) if dtype is None else dtype)
  opts = dict(options)
  while True:
    try:
      return lowered.compile(compiler_options=opts) if opts else lowered.compile()
    except Exception as e:  # pylint: disable=broad-except
      bad = [k for k in opts if k in str(e)]
      if not bad:
        raise
      logging.warning('XLA option(s) %s rejected by this jaxlib (%s); compiling without them', bad, e)
      _rejected.update(bad)
      opts = {k: v for k, v in opts.items() if k not in bad}
