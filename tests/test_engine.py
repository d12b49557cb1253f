"""The step engine: deterministic batches, 1 vs 8 devices, resume after a crash, NaN stop, padded eval."""
import dataclasses

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medunlearn_jax import algorithms
from medunlearn_jax import checkpoints as ckpt_lib
from medunlearn_jax import engine
from medunlearn_jax import errors
from medunlearn_jax import models
from medunlearn_jax.algorithms import base
from conftest import synthetic_split


def make_problem(classes=2):
  return base.flax_problem(lambda n: models.make_model('small_cnn', n, widths=(8, 16), groups=4), classes,
                           (8, 8, 1))


def erm(problem, n, lr=0.05, epochs=2.0, batch_size=16):
  hp = algorithms.get('erm').default_config()
  hp.update(lr=lr, epochs=epochs, stream='train')
  return algorithms.get('erm').build(problem, hp, {'train': n}, batch_size)


def test_driver_batches_cover_each_example_once_per_epoch():
  seen = []
  masks = []
  for step in range(3):  # 40 examples, batch 16 -> 3 steps, last one padded with 8 masked rows.
    pos, mask = engine.batch_positions(40, 16, step, seed=1, stream='s', driver=True)
    seen.append(pos[mask > 0])
    masks.append(mask)
  assert sorted(np.concatenate(seen).tolist()) == list(range(40))
  assert masks[-1].sum() == 8 and masks[0].sum() == 16
  pos_again, _ = engine.batch_positions(40, 16, 1, seed=1, stream='s', driver=True)
  np.testing.assert_array_equal(pos_again, seen[1])


def test_cycling_stream_wraps_across_epochs():
  pos = np.concatenate([engine.batch_positions(5, 4, t, seed=0, stream='f', driver=False)[0] for t in range(5)])
  assert len(pos) == 20
  for epoch in range(4):  # Every consecutive block of 5 positions is a permutation of the stream.
    assert sorted(pos[5 * epoch:5 * epoch + 5].tolist()) == list(range(5))


def _train(mesh, tmp=None, on_step=None, checkpoint_every=1000, lr=0.05):
  problem = make_problem()
  split = synthetic_split(72)
  params = problem.init_fn(jax.random.key(0))
  algorithm = erm(problem, len(split), lr=lr)
  ckpt = ckpt_lib.StageCheckpoints(tmp) if tmp else None
  options = engine.RunOptions(seed=3, batch_size=16, log_every_steps=2, checkpoint_every_steps=checkpoint_every)
  try:
    return engine.run(algorithm, {'train': split}, params, {}, mesh=mesh, options=options, checkpoints=ckpt,
                      on_step=on_step)
  finally:
    if ckpt:
      ckpt.close()


def test_eight_devices_match_one_device():
  assert jax.device_count() == 8
  p1, c1 = _train(engine.make_mesh(jax.devices()[:1]))
  p8, c8 = _train(engine.make_mesh())
  assert c1.steps == c8.steps == 10 and c1.examples == c8.examples == 144
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


def test_training_reduces_loss():
  problem = make_problem()
  split = synthetic_split(72)
  start = problem.init_fn(jax.random.key(0))
  params, _ = _train(engine.make_mesh())
  loss0, _ = base.cross_entropy(problem, start, {'image': split.images, 'label': split.labels,
                                                 'mask': np.ones(len(split), np.float32)})
  loss1, acc1 = base.cross_entropy(problem, params, {'image': split.images, 'label': split.labels,
                                                     'mask': np.ones(len(split), np.float32)})
  assert float(loss1) < float(loss0) and float(acc1) > 0.8


class Crash(Exception):
  pass


def test_resume_after_crash_gives_same_parameters(tmp_path):
  mesh = engine.make_mesh()
  reference, _ = _train(mesh)

  def crash_at_7(step):
    if step == 7:
      raise Crash()

  with pytest.raises(Crash):
    _train(mesh, tmp_path / 'ck', on_step=crash_at_7, checkpoint_every=3)
  assert ckpt_lib.StageCheckpoints(tmp_path / 'ck').latest_step() == 6
  resumed, cost = _train(mesh, tmp_path / 'ck', checkpoint_every=3)
  assert cost.steps == 10  # 6 restored from the checkpoint's cost record + 4 new.
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  # A finished stage is loaded, not retrained.
  again, cost_again = _train(mesh, tmp_path / 'ck', checkpoint_every=3)
  assert cost_again.steps == 10
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_save_killed_midway_leaves_no_temporary_folder(tmp_path):
  _train(engine.make_mesh(), tmp_path / 'ck', checkpoint_every=3)
  steps = sorted(p.name for p in (tmp_path / 'ck').iterdir())
  # What Orbax leaves when a save of step 12 is killed before its atomic rename.
  partial = tmp_path / 'ck' / '12.orbax-checkpoint-tmp-1765000000000000'
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'half_written').write_bytes(b'x')
  checkpoints = ckpt_lib.StageCheckpoints(tmp_path / 'ck')
  try:
    assert checkpoints.latest_step() == 10
    deadline = time.monotonic() + 30  # Orbax cleans up in the background (and before any next save).
    while partial.exists() and time.monotonic() < deadline:
      time.sleep(0.05)
    assert not partial.exists() and sorted(p.name for p in (tmp_path / 'ck').iterdir()) == steps
  finally:
    checkpoints.close()


def test_nan_loss_stops_without_saving(tmp_path):
  with pytest.raises(errors.NonFiniteLossError, match='loss is'):
    _train(engine.make_mesh(), tmp_path / 'ck', checkpoint_every=4, lr=1e12)
  latest = ckpt_lib.StageCheckpoints(tmp_path / 'ck').latest_step()
  assert latest is None  # The loss diverged before the first checkpoint (step 4): nothing was saved.


@pytest.mark.filterwarnings('ignore:overflow encountered in cast')  # lr 1e39 itself overflows float32.
def test_parameters_that_overflow_after_a_finite_loss_are_never_saved(tmp_path):
  # At lr 1e39 the first loss is finite but the first update overflows float32: the step-1 checkpoint
  # would hold inf/NaN parameters that a rerun resumes into.
  with pytest.raises(errors.NonFiniteLossError, match='parameters are not finite after step 1'):
    _train(engine.make_mesh(), tmp_path / 'ck', checkpoint_every=1, lr=1e39)
  assert ckpt_lib.StageCheckpoints(tmp_path / 'ck').latest_step() is None


def test_predict_pads_the_last_batch_and_keeps_every_example():
  problem = make_problem()
  params = problem.init_fn(jax.random.key(1))
  split = synthetic_split(21)
  mesh = engine.make_mesh()
  logits = engine.predict_split(engine.make_predict(problem, mesh), params, split, batch_size=8, mesh=mesh)
  expected = problem.apply_fn(params, base.normalize_images(jnp.asarray(split.images)), False)
  assert logits.shape == (21, 2)
  np.testing.assert_allclose(logits, np.asarray(expected), rtol=1e-4, atol=1e-5)


def test_batch_size_must_divide_devices():
  with pytest.raises(errors.ConfigError, match='divisible'):
    engine.check_batch_size(12, engine.make_mesh())


def _two_optimizers(problem, n, phases=('a', 'b')):
  """SGD with momentum for phase 'a', then a fresh Adam for phase 'b' (different optimizer states)."""
  step = erm(problem, n, epochs=1.0).phases[0]
  txs = {'a': base.make_optimizer('sgd', 0.05), 'b': base.make_optimizer('adam', 0.003)}
  chosen = tuple(dataclasses.replace(step, name=p, tx=txs[p]) for p in phases)
  return base.Algorithm(name='two', phases=chosen, tx=txs[phases[0]])


def test_a_phase_with_its_own_optimizer_starts_fresh_and_resumes_at_the_boundary(tmp_path):
  problem, split, mesh = make_problem(), synthetic_split(72), engine.make_mesh()
  params = problem.init_fn(jax.random.key(0))
  options = engine.RunOptions(seed=3, batch_size=16, log_every_steps=100, checkpoint_every_steps=5)
  both, cost = engine.run(_two_optimizers(problem, 72), {'train': split}, params, {}, mesh=mesh, options=options)
  assert cost.steps == 10
  # The same as running phase 'a', then phase 'b' alone from its result with a new optimizer.
  after_a, _ = engine.run(_two_optimizers(problem, 72, ('a',)), {'train': split}, params, {}, mesh=mesh,
                          options=options)
  separately, _ = engine.run(_two_optimizers(problem, 72, ('b',)), {'train': split}, after_a, {}, mesh=mesh,
                             options=options)
  for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(separately)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)

  def crash_at_7(step):
    if step == 7:
      raise Crash()

  ckpt = ckpt_lib.StageCheckpoints(tmp_path / 'ck')
  with pytest.raises(Crash):
    engine.run(_two_optimizers(problem, 72), {'train': split}, params, {}, mesh=mesh, options=options,
               checkpoints=ckpt, on_step=crash_at_7)
  assert ckpt.latest_step() == 5  # Saved with phase 'a''s SGD state, resumed into phase 'b''s Adam.
  resumed, _ = engine.run(_two_optimizers(problem, 72), {'train': split}, params, {}, mesh=mesh,
                          options=options, checkpoints=ckpt)
  ckpt.close()
  for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
