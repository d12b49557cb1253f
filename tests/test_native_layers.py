"""The model's layers: stock Flax ('xla') everywhere, the CPU kernels ('native') only where valid.

* 'native' and 'xla' train the same function: a single-device subprocess runs 3 SGD steps of the full
  ResNet-18 and of the small CNN with each, from the same parameters and batches (the native kernels only
  run with one XLA:CPU device, and this test process fakes 8);
* the 'xla' model supports forward-mode AD (jvp, Hessian-vector products);
* on 8 devices the default ('auto') model compiles to a program with no custom call, custom VJP or barrier;
* 'native' where it cannot run is one clear error.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medunlearn_jax import engine
from medunlearn_jax import errors
from medunlearn_jax import models
from medunlearn_jax.algorithms import base
from medunlearn_jax.ops import native

ROOT = pathlib.Path(__file__).resolve().parents[1]

# 'native' vs 'xla' after 3 SGD steps (lr 0.002, momentum 0.9): relative L2 distance of the three losses,
# and of each parameter tensor's displacement from the shared initial parameters. Both are float32
# computations of the same function that sum in other orders: on one gradient of ResNet-18, each differs
# from a float64 reference by up to 2.4e-3 on the first GroupNorm parameters (measured), and three steps
# compound it (measured: 9e-3 on ResNet-18, 1e-5 on the small CNN; losses 3e-6).
LOSS_RTOL = 1e-4
PARAM_RTOL = 2e-2
# The native first gradient's error against float64 may exceed the stock one's by at most this factor.
F64_ERROR_RATIO = 1.5

_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update('jax_enable_x64', True)  # For the float64 reference gradient only.
    from medunlearn_jax import models
    from medunlearn_jax.ops import native
    assert jax.device_count() == 1 and native.available(), 'needs one CPU device and the native kernels'
    name, size, ch, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.uniform(-1, 1, (3, 8, size, size, ch)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 3, (3, 8)))
    tx = optax.sgd(0.002, momentum=0.9)
    leaves = lambda tree: {jax.tree_util.keystr(k): np.asarray(v)
                           for k, v in jax.tree_util.tree_leaves_with_path(tree)}
    init = models.make_model(name, 3).init(jax.random.key(0), xs[0, :1])['params']
    arrays = {'init' + k: v for k, v in leaves(init).items()}
    out = {}
    def first_grad(kernels, dtype):
      m = models.make_model(name, 3, kernels=kernels, dtype=dtype)
      f = lambda p: optax.softmax_cross_entropy_with_integer_labels(
          m.apply({'params': p}, xs[0].astype(dtype)), ys[0]).mean()
      return jax.jit(jax.grad(f))(jax.tree.map(lambda a: a.astype(dtype), init))
    ref = jax.tree.leaves(first_grad('xla', jnp.float64))
    out['f64_error'] = {}
    for kernels in ('xla', 'native'):
      got = jax.tree.leaves(first_grad(kernels, jnp.float32))
      out['f64_error'][kernels] = max(float(np.linalg.norm(np.asarray(g, np.float64) - r) / np.linalg.norm(r))
                                      for g, r in zip(got, ref))
    for kernels in ('xla', 'native'):
      model = models.make_model(name, 3, kernels=kernels)
      params = init
      def step(p, o, x, y):
        loss, g = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.apply({'params': p}, x), y).mean())(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss
      step = jax.jit(step)
      hlo = step.lower(params, tx.init(params), xs[0], ys[0]).as_text()
      opt, losses = tx.init(params), []
      for t in range(3):
        params, opt, loss = step(params, opt, xs[t], ys[t])
        losses.append(float(loss))
      out[kernels] = {'losses': losses, 'targets': sorted(t for t in native.TARGETS if t in hlo)}
      arrays.update({kernels + k: v for k, v in leaves(params).items()})
    np.savez(path, **arrays)  # Parameters travel as a file: 11M floats as JSON would take a minute.
    print(json.dumps(out))
''')


def _single_device_run(name: str, size: int, ch: int, tmp_path: pathlib.Path) -> dict:
  """The script's JSON output, with 'init', 'xla' and 'native' parameters as {path: array} under 'params'."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  env.pop('JAX_NUM_CPU_DEVICES', None)
  path = tmp_path / 'params.npz'
  proc = subprocess.run([sys.executable, '-c', _SCRIPT, name, str(size), str(ch), str(path)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  with np.load(path) as arrays:
    out['params'] = {which: {k[len(which):]: arrays[k] for k in arrays.files if k.startswith(which)}
                     for which in ('init', 'xla', 'native')}
  return out


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@pytest.mark.skipif(not native.available(), reason='native kernels not built (no g++ or AVX-512)')
@pytest.mark.parametrize('name, size, ch', [('resnet18', 28, 1), ('small_cnn', 28, 3)])
def test_native_layers_train_like_stock_layers(name, size, ch, tmp_path):
  out = _single_device_run(name, size, ch, tmp_path)
  init, stock, fast = (out['params'][k] for k in ('init', 'xla', 'native'))
  assert out['xla']['targets'] == []  # The stock program holds no native kernel...
  assert out['native']['targets'] == sorted(native.TARGETS)  # ...the native one all four, end to end.
  assert _rel(out['native']['losses'], out['xla']['losses']) < LOSS_RTOL, out
  assert fast.keys() == stock.keys() == init.keys() and init
  # Parameter distance relative to how far the three steps moved each tensor from the shared start.
  moved = {k: stock[k] - init[k] for k in init}
  gaps = {k: _rel(fast[k] - init[k], moved[k]) for k in init}
  assert max(gaps.values()) < PARAM_RTOL, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]
  assert min(np.linalg.norm(m) for m in moved.values()) > 0  # Every tensor trained.
  # Against float64, the native layers' gradient is as accurate as the stock layers'.
  assert out['f64_error']['native'] <= F64_ERROR_RATIO * out['f64_error']['xla'] + 1e-6, out['f64_error']


def _resnet_and_params(kernels='xla'):
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 1)), jnp.float32)
  model = models.make_model('resnet18', 3, kernels=kernels)
  return model, model.init(jax.random.key(0), x)['params'], x


def test_stock_resnet_supports_forward_mode_and_hessian_vector_products():
  model, params, x = _resnet_and_params('xla')
  loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply({'params': p}, x))[:, 0])
  tangent = jax.tree.map(lambda p: jnp.ones_like(p) * 1e-3, params)
  value, directional = jax.jit(lambda p, t: jax.jvp(loss, (p,), (t,)))(params, tangent)
  grads = jax.jit(jax.grad(loss))(params)
  expected = sum(jnp.vdot(g, t) for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(tangent)))
  np.testing.assert_allclose(directional, expected, rtol=1e-3)
  hvp = jax.jit(lambda p, t: jax.jvp(jax.grad(loss), (p,), (t,))[1])(params, tangent)  # Forward-over-reverse.
  assert jax.tree.structure(hvp) == jax.tree.structure(params)
  assert all(bool(jnp.all(jnp.isfinite(h))) for h in jax.tree.leaves(hvp)) and np.isfinite(value)
  # The native layers have custom VJPs, so forward mode cannot pass through them (hence 'xla' for such runs).
  native_model, _, _ = _resnet_and_params('native')
  with pytest.raises(TypeError, match='forward-mode'):
    jax.jvp(lambda p: native_model.apply({'params': p}, x).sum(), (params,), (tangent,))


def test_native_and_stock_layers_share_parameters():
  _, stock, x = _resnet_and_params('xla')
  model, fast, _ = _resnet_and_params('native')
  jax.tree.map(np.testing.assert_array_equal, fast, stock)  # Same names, shapes and initialisers.
  np.testing.assert_allclose(model.apply({'params': stock}, x), models.make_model('resnet18', 3).apply(
      {'params': stock}, x), rtol=1e-4, atol=1e-5)


def _train_program(kernels: str):
  """The engine's train step of ResNet-18 on the 8-device mesh: its jaxpr, lowered StableHLO and compiled
  HLO, as text."""
  mesh = engine.make_mesh()
  model, params, _ = _resnet_and_params(kernels)
  problem = base.Problem(apply_fn=lambda p, x, train: model.apply({'params': p}, x, train=train),
                         init_fn=None, num_classes=3)

  def loss(p, batches, context, rng):
    del context, rng
    value, accuracy = base.cross_entropy(problem, p, batches['train'])
    return value, {'accuracy': accuracy}

  tx = optax.with_extra_args_support(base.make_optimizer('sgd', 0.1))
  state = engine.create_state(tx, params, {}, mesh)
  rng = np.random.default_rng(0)
  batch = {'train': engine.to_device({'image': rng.integers(0, 256, (16, 16, 16, 1), dtype=np.uint8),
                                      'label': rng.integers(0, 3, 16), 'mask': np.ones(16, np.float32),
                                      'id': np.arange(16)}, mesh)}
  step = engine.make_step(base.Phase(loss=loss, streams=('train',)), tx)
  key = jax.random.key(0)
  jaxpr = str(jax.make_jaxpr(step)(state, batch, key))
  lowered = jax.jit(step, donate_argnums=0).lower(state, batch, key)
  return jaxpr, lowered.as_text(), lowered.compile().as_text()


def test_default_model_on_eight_devices_has_no_custom_call_vjp_or_barrier():
  kernels = models.resolve_kernels('resnet18', 'auto')
  assert jax.device_count() == 8 and kernels == 'xla'
  jaxpr, stablehlo, hlo = _train_program(kernels)
  assert 'custom_vjp' not in jaxpr and 'optimization_barrier' not in jaxpr
  assert 'custom_call' not in stablehlo and 'optimization_barrier' not in stablehlo
  assert 'custom-call' not in hlo
  # The inspection can fail: the native layers' program shows custom VJPs and barriers (their custom calls
  # appear only on one CPU device, test_native_layers_train_like_stock_layers).
  jaxpr, stablehlo, _ = _train_program('native')
  assert 'custom_vjp_call' in jaxpr and 'optimization_barrier' in jaxpr
  assert 'optimization_barrier' in stablehlo


def test_kernel_choice_is_validated_in_one_line():
  assert models.resolve_kernels('resnet18', 'xla') == 'xla'
  assert models.resolve_kernels('resnet18', 'auto') == 'xla'  # 8 devices.
  for requested, kwargs, message in [
      ('native', {}, "'native' is not valid here: the run uses 8 devices"),
      ('native', {'devices': jax.devices()[:1], 'dtype': 'bfloat16'}, 'the compute dtype is bfloat16'),
      ('native', {'forward_mode': ['influence']}, 'influence, which needs forward-mode AD'),
      ('fast', {}, "model.kernels must be one of"),
  ]:
    with pytest.raises(errors.ConfigError, match=message) as error:
      models.resolve_kernels('resnet18', requested, **kwargs)
    assert '\n' not in str(error.value)
  one = jax.devices()[:1]
  assert models.resolve_kernels('resnet18', 'auto', forward_mode=['influence'], devices=one) == 'xla'
  assert models.resolve_kernels('resnet18', 'auto', devices=one, dtype='bfloat16') == 'xla'
  if native.available():
    assert models.resolve_kernels('resnet18', 'auto', devices=one) == 'native'
    assert models.resolve_kernels('resnet18', 'native', devices=one) == 'native'


def test_flops_are_counted_on_the_stock_program():
  """Counting under `stock_layers` gives the stock model's FLOPs whichever layers the step was built from."""
  model_native, params, x = _resnet_and_params('native')
  model_stock, _, _ = _resnet_and_params('xla')
  grad = lambda m: (lambda p: jax.grad(lambda p: m.apply({'params': p}, x).sum())(p))
  stock = engine.program_flops(jax.jit(grad(model_stock)).lower(params))
  counted = engine.program_flops(jax.jit(grad(model_native)).lower(params), grad(model_native), (params,),
                                 models.stock_layers)
  assert counted == stock > 0
  assert engine.program_flops(jax.jit(grad(model_native)).lower(params)) != stock
  # Backends without an estimate of the lowered program (XLA:GPU) count the program lowered for CPU.
  assert engine.cpu_flops(grad(model_native), (params,), models.stock_layers) == stock


def test_a_run_with_a_forward_mode_algorithm_builds_stock_layers(monkeypatch):
  import dataclasses  # pylint: disable=import-outside-toplevel
  from experiments.configs import default  # pylint: disable=import-outside-toplevel
  from medunlearn_jax import algorithms, pipeline  # pylint: disable=import-outside-toplevel
  entry = dataclasses.replace(algorithms.get('finetune'), forward_mode=True)
  monkeypatch.setitem(algorithms._REGISTRY, 'finetune', entry)  # pylint: disable=protected-access
  config = default.get_config()
  assert pipeline.model_kernels(config) == 'xla'
  config.model.kernels = 'native'
  with pytest.raises(errors.ConfigError, match='cannot serve finetune, which needs forward-mode AD'):
    pipeline.model_kernels(config)
