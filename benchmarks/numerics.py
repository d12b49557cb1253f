r"""Numerics of ResNet-18 with `kernels='native'` (custom-VJP ops, native XLA:CPU kernels, `medunlearn_jax.xla`
options) vs `kernels='xla'` (stock Flax layers, XLA defaults): the same training run on real PneumoniaMNIST,
loss per step side by side (run it on a single-device CPU process: elsewhere 'native' is not valid).

  MEDUNLEARN_DATA_DIR=../shared/data .venv/bin/python benchmarks/numerics.py [--steps=20]

Prints both loss curves and the largest absolute difference. Both runs start from identical parameters and
see identical batches (SGD + momentum, batch 128, float32).
"""
import json
import os
import pathlib

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medunlearn_jax import models
from medunlearn_jax import xla

_STEPS = flags.DEFINE_integer('steps', 20, 'Training steps to compare.')
_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')


def main(argv):
  del argv
  root = pathlib.Path(os.environ.get('MEDUNLEARN_DATA_DIR', '../shared/data'))
  with np.load(root / 'medmnist' / 'pneumoniamnist.npz', allow_pickle=False) as data:
    xs, ys = data['train_images'], data['train_labels'].reshape(-1)
  order = np.random.default_rng(0).permutation(len(xs))
  tx = optax.sgd(0.01, momentum=0.9)
  x0 = jnp.zeros((1, 28, 28, 1), jnp.float32)
  params = models.make_model('resnet18', 2).init(jax.random.key(0), x0)['params']
  curves = {}
  variants = {'stock': ('xla', {}), 'native': ('native', None)}
  for name, (kernels, options) in variants.items():
    model = models.make_model('resnet18', 2, kernels=kernels)

    def step(p, o, x, y, model=model):
      loss, grads = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
          model.apply({'params': p}, x), y).mean())(p)
      updates, o = tx.update(grads, o, p)
      return optax.apply_updates(p, updates), o, loss

    p, o = params, tx.init(params)
    lowered = jax.jit(step).lower(p, o, x0.repeat(_BATCH.value, 0), jnp.zeros(_BATCH.value, jnp.int32))
    compiled = xla.compile(lowered, 'train', options=options)
    losses = []
    for t in range(_STEPS.value):
      idx = order[t * _BATCH.value:(t + 1) * _BATCH.value]
      x = jnp.asarray(xs[idx, :, :, None], jnp.float32) * (2 / 255) - 1
      p, o, loss = compiled(p, o, x, jnp.asarray(ys[idx], jnp.int32))
      losses.append(float(loss))
    curves[name] = losses
    print(name, [round(v, 5) for v in losses], flush=True)
  diff = np.abs(np.asarray(curves['stock']) - np.asarray(curves['native']))
  print(json.dumps({'steps': _STEPS.value, 'max_abs_loss_diff': float(diff.max()),
                    'max_rel_loss_diff': float((diff / np.abs(curves['stock'])).max()),
                    'final_stock': curves['stock'][-1], 'final_native': curves['native'][-1]}))


if __name__ == '__main__':
  app.run(main)
