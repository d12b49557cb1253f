"""Custom-VJP convolution and GroupNorm match `jax.grad` of the plain implementations (float32), and the
XLA:CPU backend options change speed, not numbers."""
import ctypes
import hashlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medunlearn_jax import xla
from medunlearn_jax.ops import conv as conv_lib
from medunlearn_jax.ops import native
from medunlearn_jax.ops import norm as norm_lib


def _rel(a, b):
  return float(jnp.linalg.norm((a - b).ravel()) / (jnp.linalg.norm(b.ravel()) + 1e-30))


@pytest.mark.parametrize('size,k,stride,pad', [(8, 3, 1, 1), (8, 3, 2, 1), (7, 3, 2, 1), (8, 1, 2, 0),
                                               (7, 1, 2, 0), (6, 1, 1, 0), (9, 7, 2, 3)])
@pytest.mark.parametrize('wgrad,chunks', [('conv', 1), ('taps', 1), ('taps', 2), ('auto', 1)])
def test_conv2d_vjp_matches_autodiff(size, k, stride, pad, wgrad, chunks):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, size, size, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 5)), jnp.float32)
  plain = lambda x, w: conv_lib._conv(x, w, stride, [(pad, pad)] * 2)
  y, vjp_plain = jax.vjp(plain, x, w)
  dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  y2, vjp = jax.vjp(lambda x, w: conv_lib.conv2d(x, w, stride, pad, wgrad, chunks), x, w)
  np.testing.assert_array_equal(y2, y)
  for got, want in zip(vjp(dy), vjp_plain(dy)):
    assert got.shape == want.shape
    assert _rel(got, want) < 1e-5


needs_native = pytest.mark.skipif(not native.available(), reason='native kernel not built (no g++ or AVX-512)')


@needs_native
@pytest.mark.parametrize('size,k,stride,pad,ci,co', [(8, 3, 1, 1, 4, 64), (7, 3, 2, 1, 8, 64), (8, 1, 2, 0, 4, 128),
                                                     (9, 7, 2, 3, 4, 64), (5, 3, 1, 0, 12, 64), (3, 3, 1, 2, 4, 64)])
def test_native_weight_gradient_matches_autodiff(size, k, stride, pad, ci, co):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, size, size, ci)), jnp.float32)
  w = jnp.zeros((k, k, ci, co), jnp.float32)
  y, vjp = jax.vjp(lambda w: conv_lib._conv(x, w, stride, [(pad, pad)] * 2), w)
  dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  got = jax.jit(lambda x, dy: native.conv_wgrad(x, dy, (k, k), stride, (pad, pad)))(x, dy)
  assert got.shape == w.shape
  assert _rel(got, vjp(dy)[0]) < 1e-5
  # Inside conv2d's VJP, and vmapped over a population of models (one kernel call per model).
  _, vjp_native = jax.vjp(lambda w: conv_lib.conv2d(x, w, stride, pad, 'native'), w)
  assert _rel(vjp_native(dy)[0], vjp(dy)[0]) < 1e-5
  batched = jax.vmap(lambda x, dy: native.conv_wgrad(x, dy, (k, k), stride, (pad, pad)))(
      jnp.stack([x, 2 * x]), jnp.stack([dy, dy]))
  assert _rel(batched[1], 2 * vjp(dy)[0]) < 1e-5


@needs_native
@pytest.mark.parametrize('n,size,k,pads,ci,co', [
    (2, 8, 3, ((1, 1), (1, 1)), 16, 64), (2, 4, 3, ((1, 1), (1, 1)), 32, 128), (2, 7, 2, ((0, 1), (-1, 2)), 16, 64),
    (2, 5, 1, ((0, 0), (0, 0)), 20, 64), (2, 9, 7, ((3, 3), (3, 3)), 16, 64), (2, 13, 3, ((2, 0), (0, 2)), 16, 64),
    # Narrow maps tile across images: full groups of six, a remainder, cropping pads.
    (13, 4, 3, ((1, 1), (1, 1)), 32, 192), (8, 7, 3, ((1, 0), (-1, 1)), 16, 64)])
def test_native_stride1_convolution_matches_xla(n, size, k, pads, ci, co):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(n, size, size, ci)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, ci, co)), jnp.float32)
  want = conv_lib._conv(x, w, 1, pads)
  got = jax.jit(lambda x, w: native.conv_fwd(x, w, pads))(x, w)
  assert got.shape == want.shape
  assert _rel(got, want) < 1e-5
  batched = jax.vmap(lambda x: native.conv_fwd(x, w, pads))(jnp.stack([x, -x]))
  assert _rel(batched[1], -want) < 1e-5


@needs_native
@pytest.mark.parametrize('stride', [1, 2])
def test_conv2d_with_native_kernels_matches_autodiff(stride):
  # Forward, input gradient (stride 1: flipped kernel; stride 2: parity sub-kernels) and weight gradient.
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 64)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 64, 64)), jnp.float32)
  plain = lambda x, w: conv_lib._conv(x, w, stride, [(1, 1)] * 2)
  y, vjp_plain = jax.vjp(plain, x, w)
  dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  f = jax.jit(lambda x, w, dy: jax.vjp(lambda x, w: conv_lib.conv2d(x, w, stride, 1, 'native', 1, 'native'),
                                       x, w)[1](dy))
  lowered = jax.jit(lambda x, w: conv_lib.conv2d(x, w, stride, 1, 'native', 1, 'native')).lower(x, w).as_text()
  assert (native.FWD_TARGET in lowered) == (stride == 1)
  assert _rel(conv_lib.conv2d(x, w, stride, 1, 'native', 1, 'native'), y) < 1e-5
  for got, want in zip(f(x, w, dy), vjp_plain(dy)):
    assert _rel(got, want) < 1e-5


def test_native_kernel_gates(monkeypatch):
  # The test session has 8 (fake) CPU devices: 'auto' keeps XLA's convolution there.
  assert jax.device_count() > 1 and not native.supports((2, 8, 8, 64), (2, 8, 8, 64), jnp.float32)
  assert not native.supports((2, 8, 8, 3), (2, 8, 8, 64), jnp.float32)
  assert not native.supports((2, 8, 8, 64), (2, 8, 8, 64), jnp.bfloat16)
  assert not native.supports_fwd((2, 8, 8, 64), (3, 3, 64, 64), jnp.float32)
  with pytest.raises(ValueError, match='unknown convolution mode'):
    conv_lib._conv_fast(jnp.ones((1, 4, 4, 4)), jnp.ones((3, 3, 4, 64)), 2, [(1, 1)] * 2, 'fast')
  native.available.cache_clear()
  monkeypatch.setenv('MEDUNLEARN_NATIVE', '0')
  try:
    assert not native.available()
  finally:
    native.available.cache_clear()
  with pytest.raises(ValueError, match='unknown wgrad mode'):
    conv_lib._weight_grad(jnp.ones((1, 4, 4, 4)), jnp.ones((1, 4, 4, 64)), (3, 3, 4, 64), 1, 1, 'fast', 1)


def test_conv2d_bfloat16_gradients_keep_dtypes():
  x = jnp.ones((2, 6, 6, 3), jnp.bfloat16)
  w = jnp.ones((3, 3, 3, 4), jnp.bfloat16)
  dx, dw = jax.grad(lambda x, w: conv_lib.conv2d(x, w, 2, 1).astype(jnp.float32).sum(), (0, 1))(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  ref = jax.grad(lambda x, w: conv_lib._conv(x, w, 2, [(1, 1)] * 2).astype(jnp.float32).sum(), (0, 1))(x, w)
  np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(ref[0], np.float32), rtol=1e-2)
  np.testing.assert_allclose(np.asarray(dw, np.float32), np.asarray(ref[1], np.float32), rtol=1e-2)


@pytest.mark.parametrize('shape,groups', [((4, 5, 5, 64), 32), ((2, 6, 6, 8), 8), ((3, 4, 4, 12), 3)])
def test_group_norm_vjp_matches_autodiff(shape, groups):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=shape) * 3 + 1, jnp.float32)
  scale = jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)
  bias = jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)
  w = jnp.asarray(rng.normal(size=shape), jnp.float32)
  f = lambda fn: (lambda x, s, b: jnp.sum(w * jnp.sin(fn(x, s, b, groups))))
  np.testing.assert_allclose(norm_lib.group_norm(x, scale, bias, groups),
                             norm_lib.reference_group_norm(x, scale, bias, groups), atol=1e-6)
  got = jax.grad(f(norm_lib.group_norm), (0, 1, 2))(x, scale, bias)
  want = jax.grad(f(norm_lib.reference_group_norm), (0, 1, 2))(x, scale, bias)
  for g, r in zip(got, want):
    assert _rel(g, r) < 1e-5


def test_group_norm_module_matches_flax():
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 4, 16)), jnp.float32)
  ours, theirs = norm_lib.GroupNorm(num_groups=4), nn.GroupNorm(num_groups=4)
  p = theirs.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, p)
  np.testing.assert_allclose(ours.apply(p, x), theirs.apply(p, x), atol=1e-5)


def test_group_norm_closer_to_float64_on_offset_data():
  """Two-pass variance: no cancellation when |mean| >> std (the stock one-pass formula loses digits)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  x64 = rng.normal(size=(2, 8, 8, 8)) * 0.01 + 30.0
  x = jnp.asarray(x64, jnp.float32)
  xg = x64.reshape(2, -1, 2, 4)
  ref = ((xg - xg.mean((1, 3), keepdims=True)) / np.sqrt(xg.var((1, 3), keepdims=True) + 1e-6)).reshape(x64.shape)
  ones, zeros = jnp.ones(8), jnp.zeros(8)
  ours = np.asarray(norm_lib.group_norm(x, ones, zeros, 2), np.float64)
  stock = np.asarray(nn.GroupNorm(num_groups=2).apply({'params': {'scale': ones, 'bias': zeros}}, x), np.float64)
  assert np.abs(ours - ref).max() < np.abs(stock - ref).max()


# The float32 option used until jaxlib 0.12.0.1 showed that it miscompiles XLA's GroupNorm backward pass on
# 128- and 512-channel maps (input gradients off by up to 30 % of their range).
_MISCOMPILING_OPTION = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


def _options_error(dtype: str, options: dict) -> float:
  """Largest relative error, against a float64 reference computed without any option, of the value and
  gradients of a conv + stock GroupNorm loss compiled in `dtype` with `options`."""
  rng = np.random.default_rng(4)
  x64 = rng.normal(size=(16, 14, 14, 3))
  w1_64, w2_64 = rng.normal(size=(3, 3, 3, 128)) * 0.2, rng.normal(size=(3, 3, 128, 8)) * 0.2
  scale64 = rng.uniform(0.5, 1.5, 128)
  h64, dh64 = rng.normal(size=(16, 14, 14, 128)) * 2 + 3, rng.normal(size=(16, 14, 14, 128))
  conv = lambda x, w, s: jax.lax.conv_general_dilated(x, w, (s, s), [(1, 1)] * 2,
                                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def loss(w1, w2, scale, h, x, dh):
    y = conv(jax.nn.relu(conv(x, w1, 1)), w2, 2)
    gn = jax.nn.relu(norm_lib.reference_group_norm(h, scale, jnp.zeros_like(scale), 32))
    return jnp.mean(jnp.square(y)) + jnp.sum(gn * dh)

  grad = jax.value_and_grad(loss, (0, 1, 2, 3))
  with jax.enable_x64(True):
    args64 = [jnp.asarray(a, jnp.float64) for a in (w1_64, w2_64, scale64, h64, x64, dh64)]
    ref = [np.asarray(r) for r in jax.tree.leaves(jax.jit(grad)(*args64))]
  args = [jnp.asarray(a, jnp.float32 if i == 2 else dtype) for i, a in enumerate((w1_64, w2_64, scale64, h64,
                                                                                   x64, dh64))]
  lowered = jax.jit(grad).lower(*args)
  got = xla.compile(lowered, 'train', dtype, options=options)(*args)
  return max(float(np.linalg.norm(np.asarray(g, np.float64) - r) / np.linalg.norm(r))
             for g, r in zip(jax.tree.leaves(got), ref))


# Relative error of the whole computation against float64: float32 rounding (~1e-6) and bfloat16's 8-bit
# mantissa over these sums (~1e-2) pass; the miscompile (~0.1-0.3) does not.
_OPTIONS_TOL = {'float32': 1e-4, 'bfloat16': 5e-2}


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('kind', ['train', 'eval'])
def test_compiler_options_keep_numerics(dtype, kind):
  """The XLA:CPU options chosen for programs of this dtype compute what float64 computes without them."""
  options = xla.compiler_options(kind, dtype, platform='cpu')
  assert _options_error(dtype, options) < _OPTIONS_TOL[dtype]


def test_numerics_check_catches_the_option_that_miscompiled_group_norm():
  """The check above can fail: with the option that miscompiled GroupNorm's backward pass in jaxlib 0.12.0.1
  on the Intel machine of the third session (relative errors 0.1-0.3) it does. The miscompile depends on the
  CPU that YNNPACK's kernels are chosen for: where it does not manifest (measured on a later 2-core Intel
  VM: error 2e-6 with or without the option) the test says so and skips."""
  error = _options_error('float32', _MISCOMPILING_OPTION)
  if any(k in xla._rejected for k in _MISCOMPILING_OPTION):  # pylint: disable=protected-access
    pytest.skip('this jaxlib rejects the option')
  if error < _OPTIONS_TOL['float32']:
    pytest.skip(f'the miscompile does not manifest on this CPU (error {error:.1e} against float64)')
  assert error > 100 * _OPTIONS_TOL['float32']


def test_compiler_options_off_switch(monkeypatch):
  assert xla.compiler_options('train', 'float32', platform='gpu') == {}
  monkeypatch.setenv('MEDUNLEARN_XLA_OPTIONS', 'default')
  assert xla.compiler_options('train', 'float32', platform='cpu') == {}
  with pytest.raises(ValueError):
    monkeypatch.delenv('MEDUNLEARN_XLA_OPTIONS')
    xla.compiler_options('nonsense', platform='cpu')


@needs_native
@pytest.mark.parametrize('shape,groups', [((3, 5, 5, 64), 32), ((2, 4, 4, 512), 32), ((7, 3, 3, 24), 8),
                                          ((2, 6, 6, 16), 1)])
def test_native_group_norm_matches_float64(shape, groups, monkeypatch):
  """Forward and closed-form backward of the native GroupNorm against a float64 reference, on data whose mean
  is far from zero (the shifted moments must not cancel); also under vmap."""
  # The kernels serve single-device processes; this one fakes 8 devices, so route GroupNorm to them by hand.
  monkeypatch.setattr(native, 'supports_norm', lambda shape, dtype: True)
  rng = np.random.default_rng(5)
  x64 = rng.normal(size=shape) * 0.5 + 20.0
  scale64, bias64, dy64 = rng.uniform(0.5, 1.5, shape[-1]), rng.normal(size=shape[-1]), rng.normal(size=shape)
  xg = x64.reshape(shape[0], -1, groups, shape[-1] // groups)
  mean, rstd = xg.mean((1, 3), keepdims=True), 1 / np.sqrt(xg.var((1, 3), keepdims=True) + 1e-6)
  xhat = ((xg - mean) * rstd).reshape(shape)
  g = (dy64 * scale64).reshape(xg.shape)
  xh = xhat.reshape(xg.shape)
  dx = rstd * (g - g.mean((1, 3), keepdims=True) - xh * (g * xh).mean((1, 3), keepdims=True))
  want = (xhat * scale64 + bias64, dx.reshape(shape), (dy64 * xhat).sum((0, 1, 2)), dy64.sum((0, 1, 2)))

  x, scale, bias, dy = (jnp.asarray(a, jnp.float32) for a in (x64, scale64, bias64, dy64))
  f = jax.jit(lambda x, s, b, dy: (lambda y, vjp: (y, *vjp(dy)))(
      *jax.vjp(lambda x, s, b: norm_lib.group_norm(x, s, b, groups), x, s, b)))
  assert native.GN_FWD_TARGET in f.lower(x, scale, bias, dy).as_text()
  for got, ref in zip(f(x, scale, bias, dy), want):
    assert _rel(got, jnp.asarray(ref, jnp.float32)) < 2e-5
  batched = jax.vmap(lambda x: norm_lib.group_norm(x, scale, bias, groups))(jnp.stack([x, 2 * x - 20.0]))
  assert _rel(batched[0], jnp.asarray(want[0], jnp.float32)) < 2e-5
  assert _rel(batched[1], norm_lib.group_norm(2 * x - 20.0, scale, bias, groups)) < 2e-5


def test_group_norm_rejects_bad_groups():
  with pytest.raises(ValueError, match='does not divide'):
    norm_lib.GroupNorm(num_groups=5).init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))


def test_native_library_cache_loads_only_what_it_built(tmp_path, monkeypatch):
  """A cached library whose bytes no longer match the hash recorded at build time is rebuilt, not loaded;
  only libraries this project built (with a recorded hash) are deleted. (A one-function source stands in for
  the kernels so that each build takes a second.)"""
  if shutil.which('g++') is None:
    pytest.skip('no C++ compiler')
  source = tmp_path / 'tiny.cc'
  source.write_text('extern "C" int medunlearn_tiny() { return 7; }\n')
  monkeypatch.setattr(native, '_SOURCES', (source,))
  monkeypatch.setattr(native, '_HEADERS', ())
  cache = tmp_path / 'cache'
  cache.mkdir()
  ours_old = cache / 'libmedunlearn_native_0000.so'
  ours_old.write_bytes(b'old build')
  ours_old.with_suffix('.so.sha256').write_text(hashlib.sha256(b'old build').hexdigest())
  foreign = cache / 'libmedunlearn_native_someone_elses.so'
  foreign.write_bytes(b'not ours')

  built = native._build(cache)  # pylint: disable=protected-access
  digest = built.with_suffix('.so.sha256')
  assert digest.read_text().strip() == hashlib.sha256(built.read_bytes()).hexdigest()
  assert not ours_old.exists() and foreign.exists()
  before = built.stat().st_mtime_ns
  assert native._build(cache) == built and built.stat().st_mtime_ns == before  # Cached: not rebuilt.  # pylint: disable=protected-access

  good = built.read_bytes()
  built.write_bytes(good + b'tampered')
  assert native._build(cache) == built  # pylint: disable=protected-access
  assert built.read_bytes() != good + b'tampered'
  assert digest.read_text().strip() == hashlib.sha256(built.read_bytes()).hexdigest()
  assert ctypes.cdll.LoadLibrary(str(built)).medunlearn_tiny() == 7
