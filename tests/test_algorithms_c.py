"""Amnesiac, SCRUB+R and RUM, each against its paper's procedure written out as a plain loop or formula."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from medunlearn_jax import algorithms
from medunlearn_jax import engine
from medunlearn_jax import errors
from medunlearn_jax.algorithms import amnesiac
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import rum
import unlearning_task as task


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _accuracy(params, split) -> float:
  return float(np.mean(base.correct(base.forward(task.problem(), params, task.full_batch(split), train=False),
                                    jnp.asarray(split.labels), False)))


# ---------------------------------------------------------------------------------------------------------
# Amnesiac.

def test_amnesiac_record_is_the_sum_of_the_updates_of_forget_batches():
  """A plain loop over the original's steps (the engine's seeded batches) that adds the applied update of
  every step whose batch held a forget id: Graves et al.'s record."""
  train, data = task.original_training(), task.data()
  split, forget = data['train'], set(data['forget'].ids.tolist())
  params = task.problem().init_fn(jax.random.key(0))
  opt_state = train.tx.init(params)
  grad = jax.jit(jax.grad(lambda p, b: train.phases[0].loss(p, b, {}, None)[0]))
  total, hits = jax.tree.map(jnp.zeros_like, params), 0
  n = engine.phase_steps(train, task.sizes(), task.BATCH)[0]
  for t in range(n):
    pos, mask = engine.batch_positions(len(split), task.BATCH, t, seed=0, stream=f'{train.phases[0].name}/train',
                                       driver=True)
    updates, opt_state = train.tx.update(grad(params, {'train': engine.host_batch(split, pos, mask)}),
                                         opt_state, params)
    params = optax.apply_updates(params, updates)
    if forget & set(split.ids[pos][mask > 0].tolist()):
      total, hits = jax.tree.map(jnp.add, total, updates), hits + 1
  record = task.record(task.mesh1())
  assert (record.hits, record.steps) == (hits, n) and hits > 0
  for a, b in zip(_leaves(record.updates), _leaves(total)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The replay takes exactly the original's steps.
  for a, b in zip(_leaves(record.params), _leaves(task.original())):
    np.testing.assert_array_equal(a, b)


def test_amnesiac_recording_every_batch_undoes_the_whole_training():
  init = task.problem().init_fn(jax.random.key(0))
  record = amnesiac.record_training(task.original_training(), task.data(), init, task.data()['train'].ids,
                                    mesh=task.mesh1(), options=task.ORIGINAL_OPTIONS)
  assert record.hits == record.steps
  for r, final, start in zip(_leaves(record.updates), _leaves(task.original()), _leaves(init)):
    np.testing.assert_allclose(r, final - start, atol=2e-5)


def test_amnesiac_starts_from_the_original_minus_the_record_and_needs_one():
  hp = algorithms.get('amnesiac').default_config()
  algorithm = algorithms.get('amnesiac').build(task.problem(), hp, task.sizes(), task.BATCH)
  record = task.record(task.mesh1())
  start, _ = algorithm.prepare(task.original(), task.data(), jax.random.key(0),
                               engine.Env(task.mesh1(), task.BATCH, record=record))
  for s, o, r in zip(_leaves(start), _leaves(task.original()), _leaves(record.updates)):
    np.testing.assert_allclose(s, o - r, rtol=1e-6, atol=1e-7)
  with pytest.raises(errors.UserError, match='amnesiac needs the record'):
    algorithm.prepare(task.original(), task.data(), jax.random.key(0), engine.Env(task.mesh1(), task.BATCH))


# ---------------------------------------------------------------------------------------------------------
# SCRUB+R.

def test_scrub_r_keeps_scrubs_epochs_and_rewinds_to_the_closest_forget_accuracy():
  """Snapshot e is SCRUB run for e epochs; the handed-on one minimises |forget acc − held-out acc of the
  final model| over the snapshots (the authors' rule, accuracy = 1 − error)."""
  settings = dict(lr=0.1, epochs=3.0, msteps=2)
  hp = algorithms.get('scrub_r').default_config()
  hp.update(settings)
  algorithm = algorithms.get('scrub_r').build(task.problem(), hp, task.sizes(), task.BATCH)
  start, context = algorithm.prepare(task.original(), task.data(), None, engine.Env(task.mesh1(), task.BATCH))
  state, _ = engine.run_state(algorithm, task.data(), start, context, mesh=task.mesh1(),
                              options=task.ORIGINAL_OPTIONS)
  snapshots = state.opt_state[-1].snapshots
  scrubbed = [task.unlearn('scrub', **dict(settings, epochs=float(e)))[0] for e in (1, 2, 3)]
  for e, params in enumerate(scrubbed):
    for a, b in zip(_leaves(jax.tree.map(lambda s, e=e: s[e], snapshots)), _leaves(params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  val = task.data()['val']
  same_class = val.take(np.flatnonzero(np.isin(val.labels, task.data()['forget'].labels)))
  reference = _accuracy(scrubbed[-1], same_class)
  forget_acc = np.array([_accuracy(p, task.data()['forget']) for p in scrubbed])
  expected = int(np.argmin(np.abs(forget_acc - reference)))
  for a, b in zip(_leaves(state.params), _leaves(scrubbed[expected])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scrub_r_is_refused_in_populations_and_sweeps():
  from medunlearn_jax import sweeps  # pylint: disable=g-import-not-at-top
  algorithm = algorithms.get('scrub_r').build(task.problem(), algorithms.get('scrub_r').default_config(),
                                              task.sizes(), task.BATCH)
  with pytest.raises(errors.ConfigError, match='populations and sweeps cannot run it'):
    sweeps.run_population(algorithm, task.data(), task.original(), {}, mesh=task.mesh1(),
                          options=task.ORIGINAL_OPTIONS, seeds=[1, 2])


# ---------------------------------------------------------------------------------------------------------
# RUM.

def _true_confidence(params, split):
  logits = base.forward(task.problem(), params, task.full_batch(split), train=False)
  return np.asarray(jax.nn.softmax(logits))[np.arange(len(split)), split.labels]


def test_rum_levels_are_confidence_tertiles_and_each_retain_set_keeps_the_later_levels():
  algorithm = algorithms.get('rum').build(task.problem(), algorithms.get('rum').default_config(), task.sizes(),
                                          task.BATCH)
  sets = algorithm.derive_sets(task.original(), task.data(), engine.Env(task.mesh1(), task.BATCH))
  forget, retain = task.data()['forget'], task.data()['retain']
  confidence = _true_confidence(task.original(), forget)
  order = sorted(range(len(forget)), key=lambda i: (-confidence[i], forget.ids[i]))  # Least memorised first.
  thirds = np.array_split(np.asarray(order), 3)
  for k, level in enumerate(rum.LEVELS):
    assert sorted(sets[rum.forget_set(level)].ids) == sorted(forget.ids[thirds[k]])
    later = forget.ids[np.concatenate(thirds[k + 1:])] if k < 2 else []
    assert sorted(sets[rum.retain_set(level)].ids) == sorted([*retain.ids, *later])
  assert [len(t) for t in thirds] == rum.level_sizes(len(forget)) == [11, 11, 10]


def test_rum_is_neggrad_plus_on_each_level_in_turn():
  """The authors' proxy pipeline, written out: per level a fresh SGD(momentum 0.9) on
  α·CE(D ∖ F_{≤k}) − (1 − α)·CE(F_k), levels in order low → mid → high."""
  hp = algorithms.get('rum').default_config()
  params, _, _ = task.unlearn('rum')
  sets = algorithms.get('rum').build(task.problem(), hp, task.sizes(), task.BATCH).derive_sets(
      task.original(), task.data(), engine.Env(task.mesh1(), task.BATCH))
  expected = task.original()
  for level in rum.LEVELS:
    cfg = hp[level]
    r, f = rum.retain_set(level), rum.forget_set(level)

    def loss(p, batches, context, rng, alpha=cfg.alpha, r=r, f=f):
      del context, rng
      retain_ce, _ = base.cross_entropy(task.problem(), p, batches[r])
      forget_ce, _ = base.cross_entropy(task.problem(), p, batches[f])
      return alpha * retain_ce - (1 - alpha) * forget_ce, {}

    phase = base.Phase(loss, (r, f), epochs=cfg.epochs, name=f'{level}/neggrad_plus')
    written = base.Algorithm('written', (phase,), optax.sgd(cfg.lr, momentum=0.9))
    expected, _ = engine.run(written, sets, expected, {}, mesh=task.mesh1(), options=task.ORIGINAL_OPTIONS)
  for a, b in zip(_leaves(params), _leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_rum_levels_take_algorithms_without_set_up_and_fail_early_otherwise():
  hp = algorithms.get('rum').default_config()
  hp.low.algorithm = 'none'
  hp.mid = ml_collections.ConfigDict({'algorithm': 'finetune', 'epochs': 1.0})
  algorithm = algorithms.get('rum').build(task.problem(), hp, task.sizes(), task.BATCH)
  assert [p.name for p in algorithm.phases] == ['mid/retain', 'high/neggrad_plus']
  assert algorithm.phases[0].streams == (rum.retain_set('mid'),)
  hp.high = ml_collections.ConfigDict({'algorithm': 'scrub'})
  with pytest.raises(errors.ConfigError, match='rum.high: scrub has set-up or hooks'):
    algorithms.get('rum').build(task.problem(), hp, task.sizes(), task.BATCH)
  hp.high = ml_collections.ConfigDict({'algorithm': 'neggrad_plus', 'alpah': 0.9})
  with pytest.raises(errors.ConfigError, match=r"rum.high: neggrad_plus has no hyper-parameters \['alpah'\]"):
    algorithms.get('rum').check(hp, None)
