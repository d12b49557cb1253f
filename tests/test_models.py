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


def test_plain_cnn_is_the_classic_flatten_head_classifier():
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 28, 28, 3)), jnp.float32)
  model = models.make_model('plain_cnn', 7)
  params = model.init(jax.random.key(0), x)['params']
  assert [b for b in models.blocks(params)] == [('conv0', 'conv0_bias'), ('conv1', 'conv1_bias'), ('fc2',),
                                                ('head',)]
  assert params['fc2']['kernel'].shape == (7 * 7 * 64, 256)  # Two 2x2 poolings of 28 px, flattened.
  rng = np.random.default_rng(1)  # Biases initialise at zero; any value must enter as a conv bias.
  params = dict(params, conv0_bias=jnp.asarray(rng.normal(size=32), jnp.float32),
                conv1_bias=jnp.asarray(rng.normal(size=64), jnp.float32))
  # The same network written with stock Flax layers (biased convolutions) gives the same logits.
  conv = lambda i, h: jax.lax.conv_general_dilated(  # pylint: disable=g-long-lambda
      h, params[f'conv{i}']['kernel'], (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  h = x
  for i in range(2):
    h = jax.nn.relu(conv(i, h) + params[f'conv{i}_bias'])
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
  h = jax.nn.relu(h.reshape(3, -1) @ params['fc2']['kernel'] + params['fc2']['bias'])
  want = h @ params['head']['kernel'] + params['head']['bias']
  np.testing.assert_allclose(model.apply({'params': params}, x), want, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters(stock):
  x, _, params = stock
  model = models.make_model('resnet18', 3, dtype='bfloat16')
  p = model.init(jax.random.key(0), x)['params']
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(p))
  out = model.apply({'params': params}, x)
  ref = models.make_model('resnet18', 3).apply({'params': params}, x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.abs(ref).max()) + 0.05)
