"""Vmapped populations: member k of a population is the model `engine.run` trains with seed k."""
import jax
import numpy as np
import pytest

from medunlearn_jax import engine
from medunlearn_jax import errors
from medunlearn_jax import sweeps
from conftest import synthetic_split
from test_engine import erm, make_problem


def _options(seed=0):
  return engine.RunOptions(seed=seed, batch_size=16, log_every_steps=5, checkpoint_every_steps=1000)


def test_population_members_equal_individual_runs():
  problem = make_problem()
  split = synthetic_split(40)
  mesh = engine.make_mesh()
  algorithm = erm(problem, len(split), epochs=2.0)
  seeds = [3, 7, 11]
  stacked, cost = sweeps.run_population(algorithm, {'train': split}, None, {}, mesh=mesh, options=_options(),
                                        seeds=seeds, init_fn=problem.init_fn)
  assert cost.steps == 6 and cost.examples == 3 * 80
  for k, seed in enumerate(seeds):
    single, _ = engine.run(algorithm, {'train': split}, problem.init_fn(jax.random.key(seed)), {}, mesh=mesh,
                           options=_options(seed))
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(stacked)):
      np.testing.assert_allclose(np.asarray(b)[k], np.asarray(a), rtol=2e-4, atol=2e-5)


def test_learning_rate_scales_match_runs_with_scaled_learning_rate():
  problem = make_problem()
  split = synthetic_split(40)
  mesh = engine.make_mesh()
  start = problem.init_fn(jax.random.key(0))
  stacked, _ = sweeps.run_population(erm(problem, len(split), lr=0.1), {'train': split}, start, {}, mesh=mesh,
                                     options=_options(), seeds=[0, 0], lr_scales=[1.0, 0.25])
  for k, lr in enumerate([0.1, 0.025]):
    single, _ = engine.run(erm(problem, len(split), lr=lr), {'train': split}, start, {}, mesh=mesh,
                           options=_options())
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(stacked)):
      np.testing.assert_allclose(np.asarray(b)[k], np.asarray(a), rtol=2e-4, atol=2e-5)


def test_predict_population_shape_and_values():
  problem = make_problem()
  split = synthetic_split(21)
  mesh = engine.make_mesh()
  params = [problem.init_fn(jax.random.key(s)) for s in (1, 2)]
  stacked = jax.tree.map(lambda *x: np.stack(x), *params)
  logits = sweeps.predict_population(problem, stacked, split, batch_size=8, mesh=mesh)
  assert logits.shape == (2, 21, 2)
  single = engine.predict_split(engine.make_predict(problem, mesh), params[1], split, batch_size=8, mesh=mesh)
  np.testing.assert_allclose(logits[1], single, rtol=1e-4, atol=1e-5)


def test_bad_population_arguments():
  problem = make_problem()
  split = synthetic_split(16)
  with pytest.raises(errors.UserError, match='at least one seed'):
    sweeps.run_population(erm(problem, 16), {'train': split}, None, {}, mesh=engine.make_mesh(),
                          options=_options(), seeds=[], init_fn=problem.init_fn)
  with pytest.raises(errors.UserError, match='scales'):
    sweeps.run_population(erm(problem, 16), {'train': split}, None, {}, mesh=engine.make_mesh(),
                          options=_options(), seeds=[1, 2], lr_scales=[1.0], init_fn=problem.init_fn)
