"""Populations of models trained side by side in one program: seeds and learning-rate sweeps with `jax.vmap`.

Hyper-parameter searches and the N-model populations of the NeurIPS 2023 unlearning challenge's
forgetting-quality estimate (and U-LiRA, Hayes et al. 2024) multiply every step by the number of models.
Instead of one process per model, `run_population` stacks K models on a leading axis and vmaps the engine's
step over it: every model keeps its own parameters, optimizer state, step rng and seeded data order (so
member k is exactly the model `engine.run` trains with `seed=seeds[k]`), while the batch axis stays
sharded over the `('data',)` mesh. Learning rates are swept through a per-model scale applied after the
whole Optax chain (exact for SGD, momentum and Adam, whose updates are linear in the learning rate).
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medunlearn_jax import engine
from medunlearn_jax import errors
from medunlearn_jax import xla
from medunlearn_jax.algorithms import base
from medunlearn_jax.data import dataset as ds_lib

PyTree = Any
LR_SCALE = '_lr_scale'


def scale_by_context(key: str = LR_SCALE) -> optax.GradientTransformationExtraArgs:
  """Multiplies updates by the scalar `context[key]`: a learning-rate factor that can differ per model."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, *, context=None, **extra):
    del params, extra
    scale = context[key]
    return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates), state

  return optax.GradientTransformationExtraArgs(init, update)


def _stack(tree: PyTree, k: int) -> PyTree:
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *jnp.shape(x))), tree)


def run_population(algorithm: base.Algorithm, data: Mapping[str, ds_lib.Split], params: PyTree | None,
                   context: PyTree, *, mesh: jax.sharding.Mesh, options: engine.RunOptions,
                   seeds: Sequence[int], lr_scales: Sequence[float] | None = None,
                   init_fn: Callable[[jax.Array], PyTree] | None = None,
                   vectorize: int | None = None, stock_layers=None) -> tuple[PyTree, engine.Cost]:
  """Trains K = len(seeds) models of one algorithm side by side in one jitted, vmapped program.

  Args:
    algorithm: what to run (its phases and transformation, exactly as `engine.run` runs it).
    data: the splits its phases stream.
    params: shared starting parameters (e.g. the original model), or None with `init_fn`.
    context: the loss context shared by every model.
    mesh, options: as for `engine.run`; `options.seed` is ignored in favour of `seeds`.
    seeds: one seed per model: its step rng and data order (and initialisation with `init_fn`).
    lr_scales: optional per-model learning-rate factors (default 1).
    init_fn: fresh initialisation per model from `jax.random.key(seed)` (retraining populations).
    vectorize: how many models one vectorised step handles (`jax.lax.map`'s batch_size): None = all K
      (plain `jax.vmap`, the default). On XLA:CPU a convolution vmapped over per-model kernels becomes a
      grouped convolution, which is slower than K separate ones (benchmarks/sweep.py measures both; the
      README has the figures); smaller values trade vectorisation for a loop inside the program.
    stock_layers: the model's `Problem.stock_layers`; FLOPs are counted on the step traced inside it.

  Returns:
    Parameters stacked on a leading model axis, and the population's total `Cost`.
  """
  k = len(seeds)
  if k == 0:
    raise errors.UserError('a population needs at least one seed')
  scales = np.ones(k, np.float32) if lr_scales is None else np.asarray(lr_scales, np.float32)
  if scales.shape != (k,):
    raise errors.UserError(f'{len(scales)} learning-rate scales for {k} seeds')
  engine.check_batch_size(options.batch_size, mesh)
  if algorithm.select is not None:
    raise errors.ConfigError(f'{algorithm.name} chooses its parameters after its last step; populations and '
                             'sweeps cannot run it (run it alone)')
  if params is not None:  # Sets derived from the shared starting parameters (RUM's subsets).
    data = engine.with_derived_sets(algorithm, data, params, engine.Env(mesh, options.batch_size))
  sizes = {name: len(split) for name, split in data.items()}
  n_steps = engine.phase_steps(algorithm, sizes, options.batch_size)
  txs = [optax.chain(optax.with_extra_args_support(t), scale_by_context()) for t in algorithm.optimizers()]
  tx = txs[0] if txs else optax.chain(optax.with_extra_args_support(algorithm.tx), scale_by_context())
  phase_starts = np.concatenate([[0], np.cumsum(n_steps)]).astype(int)
  rep = engine.replicated(mesh)
  seeds_arr = jnp.asarray(seeds, jnp.uint32)

  def init(params, context):
    if init_fn is not None:
      params = jax.vmap(lambda s: init_fn(jax.random.key(s)))(seeds_arr)
    else:
      params = _stack(params, k)
    ctx = dict(_stack(context, k), **{LR_SCALE: jnp.asarray(scales)})
    return engine.TrainState(step=jnp.zeros((k,), jnp.int32), params=params,
                             opt_state=jax.vmap(tx.init)(params), context=ctx)

  abstract = jax.eval_shape(init, params, context)
  state = jax.jit(init, out_shardings=jax.tree.map(lambda _: rep, abstract))(params, context)

  @functools.partial(jax.jit, out_shardings=rep)
  def step_rngs(t):
    return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), t))(seeds_arr)

  def device_batches():
    for t, phase_index, host, examples in engine.plan_batches(algorithm, data, n_steps, options.batch_size,
                                                              list(seeds), stacked=True):
      yield t, phase_index, {s: engine.to_device(b, mesh, axis=1) for s, b in host.items()}, examples

  cost = engine.Cost()
  compiled: dict[int, Any] = {}
  flops: dict[int, float] = {}
  total = int(sum(n_steps))
  loop_start = time.perf_counter()
  metrics = None
  for t, phase_index, batch, examples in engine.prefetch(device_batches(), options.prefetch):
    phase = algorithm.phases[phase_index]
    rngs = step_rngs(t)
    if phase.tx is not None and t == phase_starts[phase_index] and t > 0:
      fresh = jax.jit(jax.vmap(txs[phase_index].init), out_shardings=rep)  # As `engine.run`: a fresh state.
      state = state.replace(opt_state=fresh(state.params))
    if phase_index not in compiled:
      t0 = time.perf_counter()
      vstep = _population_step(engine.make_step(phase, txs[phase_index]), k, vectorize)
      lowered = jax.jit(vstep, donate_argnums=0).lower(state, batch, rngs)
      compiled[phase_index] = xla.compile(lowered, 'train')
      cost.compile_seconds += time.perf_counter() - t0
      loop_start += time.perf_counter() - t0
      flops[phase_index] = engine.program_flops(lowered, vstep, (state, batch, rngs), stock_layers)
    state, metrics = compiled[phase_index](state, batch, rngs)
    cost.steps += 1
    cost.examples += examples
    cost.flops += flops[phase_index]
    if (t + 1) % options.log_every_steps == 0 or t + 1 == total:
      losses = np.asarray(metrics['loss'])
      if not np.all(np.isfinite(losses)):
        bad = [int(s) for s, v in zip(seeds, losses) if not np.isfinite(v)]
        raise errors.NonFiniteLossError(f'{algorithm.name}: non-finite loss at step {t + 1} for seeds {bad}')
      logging.info('%s population of %d [%s] step %d/%d mean loss %.4f', algorithm.name, k, phase.name,
                   t + 1, total, float(losses.mean()))
  jax.block_until_ready(state)
  cost.seconds = time.perf_counter() - loop_start
  return engine.finish_params(algorithm, state.params, mesh, stacked=True), cost


def _population_step(step, k: int, vectorize: int | None):
  if vectorize is None or vectorize >= k:
    return jax.vmap(step)
  return lambda state, batch, rngs: jax.lax.map(lambda args: step(*args), (state, batch, rngs),
                                                batch_size=vectorize)


def predict_population(problem: base.Problem, params: PyTree, split: ds_lib.Split, *, batch_size: int,
                       mesh: jax.sharding.Mesh) -> np.ndarray:
  """Logits (K, N, num_classes) of every model of a stacked population on every example of `split`."""
  # Models on axis 1 so that `predict_split` trims the padded batch along axis 0.
  predict = jax.jit(jax.vmap(lambda p, b: base.forward(problem, p, b, train=False), in_axes=(0, None),
                             out_axes=1),
                    out_shardings=engine.replicated(mesh))
  return np.moveaxis(engine.predict_split(predict, params, split, batch_size=batch_size, mesh=mesh), 0, 1)
