"""NegGrad, NegGrad+, random labels, Bad Teacher, SCRUB, ℓ1-sparse, and the loss-term composition API.

Task (see `unlearning_task`): the original model has memorised a forget set whose checkerboard pattern
contradicts the brightness rule of the retain set. "Forgetting" = forget loss up and forget accuracy down
(towards what a model never shown the pattern predicts) while retain accuracy stays within
RETAIN_TOLERANCE of the original's. Hyper-parameters are raised from the defaults so that a few steps of
a tiny model suffice; the defaults are sized for the real experiment.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medunlearn_jax import algorithms
from medunlearn_jax import engine
from medunlearn_jax import errors
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import neggrad_plus
from medunlearn_jax.algorithms import scrub
import unlearning_task as task

RETAIN_TOLERANCE = 0.05  # Retain accuracy may drop by at most 5 points.


@functools.lru_cache(maxsize=None)
def _unlearned(name, overrides):
  return task.unlearn(name, **dict(overrides))


def unlearned(name, **overrides):
  """`task.unlearn` on one device, run once per (algorithm, settings) for the whole module."""
  return _unlearned(name, tuple(sorted(overrides.items())))

FORGETTING_CASES = {
    'neggrad': dict(lr=0.1, epochs=1.0),
    'neggrad_plus': dict(lr=0.1, epochs=1.0, alpha=0.8),
    # The flip: the reference's draw (the default) cannot push a binary forget loss past chance, see below.
    'random_label': dict(lr=0.02, epochs=2.0, label_draw='other_class'),
    'bad_teacher': dict(lr=3e-3, epochs=1.0),
    # Two max passes: the first starts with the student equal to the teacher, where KL has zero gradient.
    'scrub': dict(lr=0.1, epochs=2.0, msteps=2),
    'amnesiac': {},  # Defaults: 12 of the original's 14 steps are undone, then 3 epochs of repair.
}


@pytest.mark.parametrize('name', sorted(FORGETTING_CASES))
def test_forgets_the_forget_set_and_keeps_the_retain_set(name):
  retain_loss0, retain_acc0 = task.loss_and_accuracy(task.original(), 'retain')
  forget_loss0, forget_acc0 = task.loss_and_accuracy(task.original(), 'forget')
  assert forget_acc0 == 1.0 and retain_acc0 == 1.0  # The original has memorised the forget set.
  params, _, cost = unlearned(name, **FORGETTING_CASES[name])
  retain_loss, retain_acc = task.loss_and_accuracy(params, 'retain')
  forget_loss, forget_acc = task.loss_and_accuracy(params, 'forget')
  assert cost.steps > 0
  assert forget_loss > forget_loss0 + 1.0, (forget_loss0, forget_loss)
  assert forget_acc <= 0.5, forget_acc
  assert retain_acc >= retain_acc0 - RETAIN_TOLERANCE, (retain_acc0, retain_acc, retain_loss0, retain_loss)


def test_random_label_official_draw_drives_a_binary_forget_set_to_chance():
  # Labels drawn among both classes: the target is a fair coin, so forget loss tends to log 2, not beyond.
  params, _, _ = unlearned('random_label', lr=0.02, epochs=4.0)
  forget_loss, forget_acc = task.loss_and_accuracy(params, 'forget')
  assert forget_acc <= 0.5 and abs(forget_loss - np.log(2)) < 0.3, (forget_loss, forget_acc)
  assert task.loss_and_accuracy(params, 'retain')[1] >= 1.0 - RETAIN_TOLERANCE


def _kl_to_random_teacher(params, context):
  forget = task.data()['forget']
  problem = task.problem()
  batch = task.full_batch(forget)
  teacher = base.forward(problem, context[_losses.RANDOM_TEACHER], batch, train=False)
  student = base.forward(problem, params, batch, train=False)
  return float(jnp.mean(_losses.kl_divergence(teacher, student)))


def test_bad_teacher_moves_forget_predictions_toward_the_random_teacher():
  params, context, _ = unlearned('bad_teacher', **FORGETTING_CASES['bad_teacher'])
  assert set(context) == {_losses.TEACHER, _losses.RANDOM_TEACHER}
  before = _kl_to_random_teacher(task.original(), context)
  after = _kl_to_random_teacher(params, context)
  assert after < 0.5 * before, (before, after)


def test_l1_sparse_shrinks_the_l1_norm_relative_to_finetune():
  settings = dict(lr=0.05, epochs=2.0)  # Same data plan and optimizer; only the penalty differs.
  tuned, _, _ = unlearned('finetune', **settings)
  sparse, _, _ = unlearned('l1_sparse', gamma=2e-3, **settings)
  assert float(_losses.l1_norm(sparse)) < 0.97 * float(_losses.l1_norm(tuned))
  assert task.loss_and_accuracy(sparse, 'retain')[1] >= 1.0 - RETAIN_TOLERANCE


def test_l1_gamma_decays_linearly_per_epoch():
  schedule = _losses.epoch_linear_decay(1e-3, epochs=4.0, steps_per_epoch=10)
  values = [float(schedule(jnp.asarray(t))) for t in (0, 9, 10, 25, 39, 40, 100)]
  np.testing.assert_allclose(values, [1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0, 0.0], rtol=1e-6)


def test_l1_penalty_transformation_equals_the_l1_loss_term():
  problem, params = task.problem(), task.original()
  batches = _first_batches(('retain',))
  rng = jax.random.key(0)
  with_term = _losses.combine(problem, _losses.ce_term('retain'), _losses.l1_term(3e-3))
  without = _losses.combine(problem, _losses.ce_term('retain'))
  penalty = _losses.l1_penalty(3e-3)

  @jax.jit
  def both(params):
    g_term = jax.grad(lambda p: with_term(p, batches, {}, rng)[0])(params)
    g_plain = jax.grad(lambda p: without(p, batches, {}, rng)[0])(params)
    return g_term, penalty.update(g_plain, penalty.init(params), params)[0]

  g_term, g_tx = both(params)
  for a, b in zip(jax.tree.leaves(g_term), jax.tree.leaves(g_tx)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def _first_batches(streams):
  data = task.data()
  out = {}
  for i, stream in enumerate(streams):
    pos, mask = engine.batch_positions(len(data[stream]), task.BATCH, 0, seed=0, stream=stream, driver=i == 0)
    out[stream] = engine.host_batch(data[stream], pos, mask)
  return out


def test_neggrad_plus_with_l1_composition_is_the_sum_of_its_parts_and_runs():
  problem, params = task.problem(), task.original()
  settings = FORGETTING_CASES['neggrad_plus']
  alpha, gamma = settings['alpha'], 1e-3
  pieces = (*neggrad_plus.terms(alpha), _losses.l1_term(gamma))
  loss = _losses.combine(problem, neggrad_plus.terms(alpha), _losses.l1_term(gamma))
  batches = _first_batches(neggrad_plus.STREAMS)
  rng = jax.random.key(0)
  total, metrics = loss(params, batches, {}, rng)
  parts = [float(_losses.combine(problem, piece)(params, batches, {}, rng)[0]) for piece in pieces]
  ce_retain, _ = base.cross_entropy(problem, params, batches['retain'])
  ce_forget, _ = base.cross_entropy(problem, params, batches['forget'])
  by_hand = alpha * ce_retain - (1 - alpha) * ce_forget + gamma * _losses.l1_norm(params)
  np.testing.assert_allclose(float(total), sum(parts), rtol=1e-6)
  np.testing.assert_allclose(float(total), float(by_hand), rtol=1e-5)
  assert {'retain_ce', 'forget_ce', 'retain_acc', 'forget_acc', 'l1_norm'} <= set(metrics)

  # The composition runs through the engine like any registered algorithm.
  hp = neggrad_plus.default_config()
  hp.update(**settings)
  phase = base.Phase(loss, streams=neggrad_plus.STREAMS, epochs=hp.epochs, name='neggrad_plus')
  composed = _losses.build('neggrad_plus_l1', (phase,), hp, task.sizes(), task.BATCH)
  out, _ = engine.run(composed, task.data(), params, {}, mesh=task.mesh1(),
                      options=engine.RunOptions(seed=0, batch_size=task.BATCH, log_every_steps=10_000))
  plain, _, _ = unlearned('neggrad_plus', **settings)  # Same run without the ℓ1 term.
  assert float(_losses.l1_norm(out)) < float(_losses.l1_norm(plain))
  assert task.loss_and_accuracy(out, 'forget')[1] <= 0.5


def test_terms_share_one_forward_pass_per_stream():
  calls = []
  inner = task.problem()

  def counting_apply(params, images, train):
    calls.append(train)
    return inner.apply_fn(params, images, train)

  problem = base.Problem(counting_apply, inner.init_fn, inner.num_classes)
  loss = _losses.combine(problem, scrub.min_terms(scrub.default_config()))
  loss(task.original(), _first_batches(('retain',)), {_losses.TEACHER: task.original()}, jax.random.key(0))
  assert sorted(calls) == [False, True]  # One teacher pass and one student pass (KL and CE share it).


def test_random_labels_official_draw_and_other_class_draw():
  labels = jnp.asarray(np.arange(4000) % 4)
  new = _losses.random_labels(jax.random.key(0), labels, 4, multilabel=False, draw='other_class')
  assert not np.any(np.asarray(new) == np.asarray(labels))
  for c in range(4):  # Every other class is drawn about equally often.
    counts = np.bincount(np.asarray(new)[np.asarray(labels) == c], minlength=4)
    assert counts[c] == 0 and counts.min(initial=10**9, where=np.arange(4) != c) > 250
  again = _losses.random_labels(jax.random.key(0), labels, 4, multilabel=False, draw='other_class')
  np.testing.assert_array_equal(np.asarray(new), np.asarray(again))
  # The reference's randint(0, C): the default; on a binary task about half of the labels stay true.
  binary = jnp.asarray(np.arange(4000) % 2)
  kept = np.mean(np.asarray(_losses.random_labels(jax.random.key(0), binary, 2, False)) == np.asarray(binary))
  assert 0.45 < kept < 0.55
  assert algorithms.get('random_label').default_config().label_draw == 'official'
  assert algorithms.get('salun').default_config().label_draw == 'official'
  with pytest.raises(errors.ConfigError, match='label_draw'):
    _losses.random_label_term('forget', draw='flip')


def test_kl_divergence_is_zero_for_equal_outputs_and_matches_the_definition():
  rng = np.random.default_rng(0)
  t, s = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
  np.testing.assert_allclose(_losses.kl_divergence(t, t, 2.0), 0.0, atol=1e-6)
  p, q = jax.nn.softmax(t / 2.0), jax.nn.softmax(s / 2.0)
  np.testing.assert_allclose(_losses.kl_divergence(t, s, 2.0), 4.0 * np.sum(p * np.log(p / q), -1), rtol=1e-5)
  bern = _losses.kl_divergence(t, s, 1.0, multilabel=True)
  pt, ps = jax.nn.sigmoid(t), jax.nn.sigmoid(s)
  expected = np.mean(pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps)), -1)
  np.testing.assert_allclose(bern, expected, rtol=1e-4, atol=1e-6)


def test_scrub_schedule_alternates_max_and_min_passes():
  hp = scrub.default_config()
  hp.update(epochs=3.0, msteps=2)
  phases = scrub.phases(task.problem(), hp)
  assert [(p.name, p.streams, p.epochs) for p in phases] == [
      ('max0', ('forget',), 1.0), ('min0', ('retain',), 1.0), ('max1', ('forget',), 1.0),
      ('min1', ('retain',), 2.0)]
  assert phases[0].loss is phases[2].loss  # Repeated passes share one compiled program in the engine.
  hp.update(msteps=0)
  assert [(p.name, p.epochs) for p in scrub.phases(task.problem(), hp)] == [('min0', 3.0)]


def test_every_registered_config_documents_a_search_space_of_its_own_fields():
  for name in ('neggrad', 'neggrad_plus', 'random_label', 'bad_teacher', 'scrub', 'l1_sparse'):
    entry = algorithms.get(name)
    hp = entry.default_config()
    assert hp.search_space and set(hp.search_space) <= set(hp) - {'search_space'}, name
    assert 'NeurIPS' in entry.doc or 'AAAI' in entry.doc or 'CVPR' in entry.doc, name
    assert '←' in entry.doc, name  # States its update rule.
  with pytest.raises(ValueError, match='unknown hyper-parameters'):
    _losses.hparams({'nope': [1]})


def test_weight_decay_is_coupled_for_sgd_and_adam_and_decoupled_for_adamw():
  # torch semantics: SGD/Adam add wd·θ to the gradient (so Adam rescales it); AdamW decays after scaling.
  params, grads, wd, lr = {'w': jnp.array([2.0, -1.0])}, {'w': jnp.array([0.5, 0.25])}, 0.1, 0.01
  coupled = {'w': grads['w'] + wd * params['w']}
  cases = [(base.make_optimizer('adam', lr, weight_decay=wd), base.make_optimizer('adam', lr), coupled),
           (base.make_optimizer('sgd', lr, momentum=0.0, weight_decay=wd),
            base.make_optimizer('sgd', lr, momentum=0.0), coupled)]
  for tx, plain, g in cases:
    expected, _ = plain.update(g, plain.init(params), params)
    got, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(got['w'], expected['w'], rtol=1e-6)
  adamw = base.make_optimizer('adamw', lr, weight_decay=wd)
  plain = base.make_optimizer('adam', lr)
  got, _ = adamw.update(grads, adamw.init(params), params)
  scaled, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_allclose(got['w'], scaled['w'] - lr * wd * params['w'], rtol=1e-6)
