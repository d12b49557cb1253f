"""Amnesiac unlearning: undo the updates of the training steps whose batch held a forget example, then repair.

Graves, Nagisetty & Ganesh, "Amnesiac Machine Learning", AAAI 2021. While the original model trains, the
applied update of every batch that holds a sensitive example is kept, Δ_t = θ_{t+1} − θ_t (optimizer
effects included). Unlearning removes them and fine-tunes briefly on the retain set to repair the damage:
θ ← θ_T − Σ_{t : B_t ∩ F ≠ ∅} Δ_t, then θ ← θ − η ∇ CE(θ; retain batch). (Not the random relabelling that
some benchmark code calls "amnesiac": that is `random_label`.)

The record. The authors keep the deltas while training. This project trains the original before, and
independently of, any forget set, so the record is obtained by replaying the original's training
(`record_training`) with `record_updates` chained after its optimizer: the engine's batches and step rngs
are functions of (seed, step), so the replay takes the original's steps exactly (the pipeline logs how far
the replay's parameters are from the original's: 0 on the same devices). Only the sum of the deltas is kept,
one parameter-sized buffer, which is all the unlearning step reads. In the method's own terms recording is
a training-time cost, so the replay is not counted in amnesiac's unlearning cost (it is logged and kept
with its own checkpoint, `checkpoints/amnesiac_record`).

When it applies. The removed sum grows with the number of batches that touched the forget set. A forget set
spread over the training set (a random 10 % with batch 128 touches every batch) removes every update and
returns the model to its initialisation, after which the repair is a short retrain; the method is meant
for forget sets that touch few batches (a class, a patient, a few examples). The log says which fraction
of the original's steps was undone.

Defaults, against the authors' notebooks (lmgraves/AmnesiacML): the repair uses Adam at lr 1e-3 on the
retain set, as theirs. Where we differ: 3 epochs instead of 10 (5 in their MIA notebook), the budget of
this project's fine-tuning baselines; and a fresh Adam state (theirs continues the original's, which this
project's stages do not hand on).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from medunlearn_jax import algorithms
from medunlearn_jax import errors
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import erm

PyTree = Any
RECORD_IDS = 'record_ids'  # Context key of the (sorted) ids whose batches are recorded.


class RecordState(NamedTuple):
  """`record`: the sum of the updates of recorded steps; `hits`: how many steps were recorded; `steps`: seen."""
  record: PyTree
  hits: jax.Array
  steps: jax.Array


@dataclasses.dataclass(frozen=True)
class Record:
  """What `record_training` returns: the summed updates, the counts, and the replay's final parameters."""
  updates: PyTree
  hits: int
  steps: int
  params: PyTree
  seconds: float


def record_updates(stream: str = 'train') -> optax.GradientTransformationExtraArgs:
  """Passes updates through unchanged and adds them to a running sum whenever the step's `stream` batch
  holds a real row (mask 1) whose id is in `context[RECORD_IDS]`. Chain it last, after the optimizer, so
  that it sums the updates as applied."""

  def init(params):
    zeros = jnp.zeros((), jnp.int32)
    return RecordState(jax.tree.map(jnp.zeros_like, params), zeros, zeros)

  def update(updates, state, params=None, *, context=None, batch=None, **extra):
    del params, extra
    rows = batch[stream]
    hit = jnp.any(jnp.isin(rows['id'], context[RECORD_IDS]) & (rows['mask'] > 0))
    record = jax.tree.map(lambda r, u: r + jnp.where(hit, u, jnp.zeros_like(u)).astype(r.dtype),
                          state.record, updates)
    return updates, RecordState(record, state.hits + hit.astype(jnp.int32), state.steps + 1)

  return optax.GradientTransformationExtraArgs(init, update)


def record_training(train: base.Algorithm, data: Mapping[str, Any], init_params: PyTree,
                    forget_ids: np.ndarray, **run_kwargs: Any) -> Record:
  """Replays the training run `train` from `init_params` (as `engine.run` ran it with the same options)
  and returns the summed updates of its steps whose batch held one of `forget_ids`.

  `run_kwargs` go to `engine.run_state` (mesh, options, and checkpoints to make the replay resumable).
  """
  from medunlearn_jax import engine  # pylint: disable=g-import-not-at-top  # The engine runs algorithms.
  if len(train.phases) != 1:
    raise errors.ConfigError(f'amnesiac replays a one-phase training run; {train.name!r} has {len(train.phases)}')
  recording = dataclasses.replace(train, tx=optax.chain(train.tx, record_updates(train.phases[0].streams[0])))
  context = {RECORD_IDS: np.sort(np.asarray(forget_ids)).astype(np.int32)}
  state, cost = engine.run_state(recording, data, init_params, context, **run_kwargs)
  recorded = state.opt_state[-1]
  return Record(updates=recorded.record, hits=int(recorded.hits), steps=int(recorded.steps),
                params=state.params, seconds=cost.seconds)


def default_config() -> ml_collections.ConfigDict:
  # See the module docstring for where each default comes from.
  return _losses.hparams({'lr': [1e-4, 3e-4, 1e-3, 3e-3], 'epochs': [1.0, 2.0, 3.0, 5.0]},
                         optimizer='adam', lr=1e-3, weight_decay=0.0, schedule='constant', epochs=3.0)


def prepare(params: PyTree, data: Any, rng: jax.Array, env: Any) -> tuple[PyTree, PyTree]:
  """θ_T − Σ Δ_t: the original without the recorded updates (`env.record`, an `Record`)."""
  del data, rng
  if env.record is None:
    raise errors.UserError('amnesiac needs the record of the original\'s training (Env.record); the pipeline '
                           'makes it with amnesiac.record_training')
  record = env.record
  logging.info('amnesiac: undoing %d of the original\'s %d steps (%.1f %%), whose batches held forget examples',
               record.hits, record.steps, 100.0 * record.hits / max(record.steps, 1))
  replicated = jax.sharding.NamedSharding(env.mesh, jax.sharding.PartitionSpec())
  undo = jax.jit(lambda p, u: jax.tree.map(lambda a, b: a - b.astype(a.dtype), p, u),
                 out_shardings=replicated)
  return undo(params, record.updates), {}


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  phase = erm.supervised_phase(problem, 'retain', hp.epochs)
  return _losses.build('amnesiac', (phase,), hp, sizes, batch_size, prepare=prepare)


algorithms.register('amnesiac', default_config, build, doc=__doc__, needs_record=True)
