"""Properties every registered algorithm has: bit-identical reruns, and the same result on 1 and 8 devices.

Each case shortens the data plan (every `*epochs` field to at most 1, every `*_steps` count to at most 2)
so that it runs in seconds; an algorithm that needs a set this fixture lacks is skipped, not failed.
"""
import jax
import numpy as np
import pytest

from medunlearn_jax import algorithms
from medunlearn_jax import engine
from medunlearn_jax import errors
import unlearning_task as task


def short(name: str) -> dict:
  hp = algorithms.get(name).default_config()
  out = {}
  for key, value in hp.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    if key.endswith('epochs'):
      out[key] = type(value)(min(value, 1))
    elif key.endswith('_steps') and isinstance(value, int):
      out[key] = min(value, 2)
  return out


def run(name: str, mesh):
  try:
    params, _, _ = task.unlearn(name, mesh, seed=5, **short(name))
  except errors.UserError as e:
    if 'needs a non-empty' in str(e):
      pytest.skip(f'{name}: {e}')
    raise
  return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


@pytest.mark.parametrize('name', algorithms.names())
def test_deterministic_and_independent_of_device_count(name):
  assert jax.device_count() == 8
  one = run(name, task.mesh1())
  again = run(name, task.mesh1())  # The rerun on one device: cheaper here than on eight fake ones.
  eight = run(name, engine.make_mesh())
  for a, b in zip(one, again):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(one, eight):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
