"""Models: parameter trees, block order, gradients of both layer families, bfloat16 compute."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medunlearn_jax import models



@pytest.fixture(scope='module')
def stock():
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 16, 16, 1)), jnp.float32)
  model = models.make_model('resnet18', 3)
  params = model.init(jax.random.key(0), x)['params']
  return x, model, params


def test_resnet_blocks_in_forward_order(stock):
  _, _, params = stock
  assert [b[0] for b in models.blocks(params)][:2] == ['stem_conv', 'stage1_block1']


@pytest.mark.parametrize('kernels', ['xla', 'native'])
def test_native_layer_gradients_match_autodiff(stock, kernels):
  """The native layers' custom VJPs (run here as their XLA versions: this process has 8 devices) give the
  stock layers' autodiff gradients; ReLU masks agree, so the match is tight."""
  x, model, params = stock
  loss = lambda m: (lambda p: jnp.sum(jax.nn.log_softmax(m.apply({'params': p}, x))[:, 0]))
  want = jax.grad(loss(model))(params)
  got = jax.grad(loss(models.make_model('resnet18', 3, kernels=kernels)))(params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4 * float(jnp.abs(w).max()) + 1e-7)


def test_small_cnn_unchanged():
  x = jnp.zeros((1, 28, 28, 1))
  params = models.make_model('small_cnn', 2).init(jax.random.key(0), x)['params']
  assert sorted(params) == ['conv0', 'conv1', 'conv2', 'head', 'norm0', 'norm1', 'norm2']


def test_bfloat16_compute_keeps_float32_parameters(stock):
  x, _, params = stock
  model = models.make_model('resnet18', 3, dtype='bfloat16')
  p = model.init(jax.random.key(0), x)['params']
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(p))
  out = model.apply({'params': params}, x)
  ref = models.make_model('resnet18', 3).apply({'params': params}, x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.abs(ref).max()) + 0.05)
