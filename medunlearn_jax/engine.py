"""The step engine: device mesh, the one jitted train/unlearn step, the loops, and batched prediction.

Every algorithm (plain training, retraining, every unlearning method) runs through `run`:

* a `('data',)` mesh over all devices of all processes; parameters and optimizer state are replicated,
  batches are sharded along their leading axis (`NamedSharding`), so `jax.jit` inserts the gradient
  all-reduce;
* the step `(state, batch, rng) -> (state, metrics)` is a pure function, compiled ahead of time once per
  distinct phase loss with the state donated;
* batches are a deterministic function of (seed, stream, step): resuming from a checkpoint replays exactly
  the same data, so an interrupted run ends with the same parameters as an uninterrupted one;
* each process gathers and transfers only its own slice of every global batch, and a background thread
  prepares the next batches while the current step runs;
* the last batch of an epoch is padded with a mask (losses are masked means), never dropped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import queue
import threading
import time
import zlib
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence

from absl import logging
import flax.struct
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

from medunlearn_jax import checkpoints as ckpt_lib
from medunlearn_jax import errors
from medunlearn_jax import xla
from medunlearn_jax.algorithms import base
from medunlearn_jax.data import dataset as ds_lib

PyTree = Any
DATA_AXIS = 'data'
PROGRESS_SECONDS = 20.0  # Long passes outside the step loop log their progress at most this often.


# ---------------------------------------------------------------------------------------------------------
# Mesh and shardings.

def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D `('data',)` mesh over `devices` (default: every device of every process)."""
  devices = list(devices) if devices is not None else jax.devices()
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  if batch_size % mesh.size:
    raise errors.ConfigError(f'batch size {batch_size} is not divisible by the {mesh.size} devices')


# ---------------------------------------------------------------------------------------------------------
# State and step.

class TrainState(flax.struct.PyTreeNode):
  """Everything a step reads and writes. `context` holds arrays a loss reads but never updates
  (teacher parameters, masks...)."""
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  context: PyTree


def create_state(tx: optax.GradientTransformation, params: PyTree, context: PyTree,
                 mesh: jax.sharding.Mesh) -> TrainState:
  """Builds the train state already replicated on the mesh (shapes first, via `jax.eval_shape`)."""

  def init(params, context):
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      opt_state=tx.init(params), context=context)

  abstract = jax.eval_shape(init, params, context)
  shardings = jax.tree.map(lambda _: replicated(mesh), abstract)
  return jax.jit(init, out_shardings=shardings)(params, context)


def make_step(phase: base.Phase, tx: optax.GradientTransformationExtraArgs
              ) -> Callable[[TrainState, Mapping[str, base.Batch], jax.Array], tuple[TrainState, dict]]:
  """The pure step of one phase: gradient of the phase's loss, Optax update, metrics."""
  tx = optax.with_extra_args_support(tx)

  def step(state: TrainState, batch: Mapping[str, base.Batch], rng: jax.Array):
    (loss, metrics), grads = jax.value_and_grad(phase.loss, has_aux=True)(
        state.params, batch, state.context, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, context=state.context, batch=batch)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


# ---------------------------------------------------------------------------------------------------------
# Deterministic batches.

def _stream_seed(seed: int, stream: str, epoch: int) -> np.random.SeedSequence:
  return np.random.SeedSequence([seed, zlib.crc32(stream.encode()), epoch])


def batch_positions(size: int, batch_size: int, step: int, *, seed: int, stream: str,
                    driver: bool) -> tuple[np.ndarray, np.ndarray]:
  """Row positions and mask of the global batch of `stream` at `step`.

  The driver stream walks seeded per-epoch permutations in ceil(size / batch_size) steps per epoch, padding
  the last batch (mask 0). Other streams cycle through their own permutations without padding, so that a
  small forget set is revisited while the retain set drives the epoch.
  """
  if size <= 0:
    raise errors.UserError(f'stream {stream!r} is empty')
  if driver:
    spe = math.ceil(size / batch_size)
    epoch, k = divmod(step, spe)
    perm = np.random.default_rng(_stream_seed(seed, stream, epoch)).permutation(size)
    pos = perm[k * batch_size:(k + 1) * batch_size]
    mask = np.ones(batch_size, np.float32)
    mask[len(pos):] = 0.0
    return np.pad(pos, (0, batch_size - len(pos))), mask
  start = step * batch_size
  out, epochs = [], range(start // size, (start + batch_size - 1) // size + 1)
  for epoch in epochs:
    perm = np.random.default_rng(_stream_seed(seed, stream, epoch)).permutation(size)
    lo = max(start - epoch * size, 0)
    hi = min(start + batch_size - epoch * size, size)
    out.append(perm[lo:hi])
  return np.concatenate(out), np.ones(batch_size, np.float32)


def host_batch(split: ds_lib.Split, positions: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
  """This process's rows of the global batch at `positions` of `split`, as the arrays a loss reads.

  In a multi-process run each process gathers (and, with lazily read images, reads from disk) only its
  contiguous slice of the global batch; `to_device` assembles the global array.
  """
  if jax.process_count() > 1:
    positions = np.array_split(positions, jax.process_count())[jax.process_index()]
    mask = np.array_split(mask, jax.process_count())[jax.process_index()]
  return {'image': split.images[positions], 'label': split.labels[positions], 'mask': mask,
          'id': split.ids[positions]}


def to_device(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh, axis: int = 0) -> dict[str, jax.Array]:
  """Places this process's slice of a global batch (from `host_batch`) on its devices, sharded along 'data'.

  `axis` is the batch axis (1 for the stacked batches of a model population, see `sweeps`).
  """
  sharding = NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))
  out = {}
  for key, value in batch.items():
    shape = list(np.shape(value))
    shape[axis] *= jax.process_count()
    out[key] = jax.make_array_from_process_local_data(sharding, value, tuple(shape))
  return out


def prefetch(iterator: Iterator[Any], depth: int = 2) -> Iterator[Any]:  # pylint: disable=redefined-outer-name
  """Runs `iterator` in a background thread, `depth` items ahead (exceptions are re-raised here)."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  sentinel = object()
  stop = threading.Event()

  def worker():
    try:
      for item in iterator:
        if stop.is_set():
          return
        q.put(item)
      q.put(sentinel)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is sentinel:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


# ---------------------------------------------------------------------------------------------------------
# Running an algorithm.

@dataclasses.dataclass
class Cost:
  """What a stage cost: wall-clock seconds without compilation (the training loop plus the algorithm's
  set-up, e.g. a saliency or Fisher pass, also counted alone as `prepare_seconds`), compile seconds,
  optimizer steps, examples processed (real, unpadded rows over all streams), and XLA's FLOP estimate of
  the steps and of the set-up's programs (the latter also alone as `prepare_flops`)."""
  seconds: float = 0.0
  prepare_seconds: float = 0.0
  compile_seconds: float = 0.0
  steps: int = 0
  examples: int = 0
  flops: float = 0.0
  prepare_flops: float = 0.0

  def to_json(self) -> dict[str, float]:
    return dataclasses.asdict(self)

  @classmethod
  def setup(cls, seconds: float, flops: float) -> 'Cost':
    """The cost of an algorithm's set-up alone (its `prepare`, `derive_sets` or `select`)."""
    return cls(seconds=seconds, prepare_seconds=seconds, flops=flops, prepare_flops=flops)

  def add_setup(self, other: 'Cost') -> None:
    self.seconds += other.seconds
    self.prepare_seconds += other.prepare_seconds
    self.flops += other.flops
    self.prepare_flops += other.prepare_flops


@dataclasses.dataclass(frozen=True)
class RunOptions:
  seed: int = 0
  batch_size: int = 128
  log_every_steps: int = 50
  checkpoint_every_steps: int = 200
  prefetch: int = 2


def phase_steps(algorithm: base.Algorithm, sizes: Mapping[str, int], batch_size: int) -> list[int]:
  """Number of steps of each phase of an algorithm's data plan."""
  out = []
  for phase in algorithm.phases:
    if phase.steps is not None:
      out.append(int(phase.steps))
    else:
      spe = math.ceil(sizes[phase.streams[0]] / batch_size)
      out.append(max(1, int(round(phase.epochs * spe))))
  return out


def plan_batches(algorithm: base.Algorithm, data: Mapping[str, ds_lib.Split], n_steps: Sequence[int],
                 batch_size: int, seeds: Sequence[int], start: int = 0, stacked: bool = False
                 ) -> Iterator[tuple[int, int, dict[str, dict[str, np.ndarray]], int]]:
  """The host batches of an algorithm's data plan from global step `start` on.

  Yields (step, phase index, {stream: batch}, real examples). With one seed the batches are those of that
  seed; with `stacked`, one batch per seed is stacked on a leading model axis (for `sweeps`), each model
  walking its own seeded data order.
  """
  sizes = {k: len(v) for k, v in data.items()}
  boundaries = np.cumsum(n_steps)
  for t in range(start, int(boundaries[-1]) if len(boundaries) else 0):
    phase_index = int(np.searchsorted(boundaries, t, side='right'))
    phase = algorithm.phases[phase_index]
    local_t = int(t - (boundaries[phase_index - 1] if phase_index else 0))
    host, examples = {}, 0
    for i, stream in enumerate(phase.streams):
      per_seed = []
      for seed in seeds:
        pos, mask = batch_positions(sizes[stream], batch_size, local_t, seed=seed,
                                    stream=f'{phase.name}/{stream}', driver=(i == 0))
        per_seed.append(host_batch(data[stream], pos, mask))
        examples += int(mask.sum())
      host[stream] = ({k: np.stack([b[k] for b in per_seed]) for k in per_seed[0]} if stacked
                      else per_seed[0])
    yield t, phase_index, host, examples


def _estimate(lowered) -> float:
  try:
    analysis = lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend implements cost analysis.
    return 0.0
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def program_flops(lowered, fn: Callable[..., Any] | None = None, args: Sequence[Any] = (),
                  stock_layers: Callable[[], ContextManager[Any]] | None = None) -> float:
  """XLA's FLOP estimate of a lowered program, counted on the HLO before backend optimisation (so that
  convolutions handed to library custom calls such as oneDNN or cuDNN are still counted).

  With `stock_layers` (a model's `Problem.stock_layers`), the unjitted `fn` is traced again on `args` inside
  that context and the stock-layer program is counted instead, so FLOP costs do not depend on which kernels
  computed the step (custom calls are invisible to the estimate, and custom VJPs count other operations).
  Where the backend gives no estimate of a lowered program (XLA:GPU in jax 0.11; its compiled estimate
  misses the cuDNN convolutions), the same `fn` is lowered for CPU and counted there.
  """
  stock = stock_layers if stock_layers not in (None, contextlib.nullcontext) else contextlib.nullcontext
  if fn is not None and stock is not contextlib.nullcontext:
    with stock():
      # A fresh function object: jit would otherwise reuse its cached trace of `fn` (with the kernels).
      lowered = jax.jit(lambda *a: fn(*a)).lower(*args)
  flops = _estimate(lowered)
  if flops == 0.0 and fn is not None:
    flops = cpu_flops(fn, args, stock)
  return flops


def cpu_flops(fn: Callable[..., Any], args: Sequence[Any],
              stock_layers: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> float:
  """XLA's FLOP estimate of `fn(*args)` lowered for CPU (shapes only; any backend can do this)."""
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tuple(args))
  try:
    with stock_layers():
      return _estimate(jax.jit(lambda *a: fn(*a)).trace(*abstract).lower(lowering_platforms=('cpu',)))
  except Exception:  # pylint: disable=broad-except
    return 0.0


def run(algorithm: base.Algorithm, data: Mapping[str, ds_lib.Split], params: PyTree, context: PyTree,
        **kwargs: Any) -> tuple[PyTree, Cost]:
  """Runs an algorithm's data plan (`run_state`) and returns its final parameters, after `algorithm.finish`
  (replicated on the mesh), and the accumulated `Cost`."""
  state, cost = run_state(algorithm, data, params, context, **kwargs)
  return finish_params(algorithm, state.params, kwargs['mesh']), cost


def with_derived_sets(algorithm: base.Algorithm, data: Mapping[str, ds_lib.Split], params: PyTree,
                      env: 'Env') -> dict[str, ds_lib.Split]:
  """`data` plus the sets the algorithm derives from it and its starting parameters (`derive_sets`)."""
  data = dict(data)
  if algorithm.derive_sets is not None:
    data.update(algorithm.derive_sets(params, data, env))
  return data


def run_state(algorithm: base.Algorithm, data: Mapping[str, ds_lib.Split], params: PyTree, context: PyTree,
              *, mesh: jax.sharding.Mesh, options: RunOptions, checkpoints: ckpt_lib.StageCheckpoints | None = None,
              meta: Mapping[str, Any] | None = None, on_step: Callable[[int], None] | None = None,
              setup: Cost | None = None, on_epoch: Callable[[int, PyTree], None] | None = None,
              stock_layers: Callable[[], ContextManager[Any]] | None = None) -> tuple[TrainState, Cost]:
  """Runs an algorithm's data plan from `params`, resuming from `checkpoints` when it holds a state.

  Args:
    algorithm: the loss/transformation/data plan to run.
    data: the splits named by the phases' streams ('train', 'retain', 'forget', ...).
    params, context: the starting parameters and the loss context (e.g. a teacher).
    mesh: the device mesh.
    options: seed, batch size, logging and checkpoint cadence.
    checkpoints: where to save/resume; None runs without checkpoints.
    meta: extra metadata stored with every checkpoint (e.g. hyper-parameters, data fingerprint).
    on_step: called with the global step after each step (used by tests to simulate a crash).
    setup: what the algorithm's `prepare` cost (`Cost.setup`: seconds and FLOPs), added to a fresh run's
      cost with that of `derive_sets` and `select` (a resumed run keeps the cost recorded in its checkpoint).
    on_epoch: called with (epoch, params) whenever the first phase completes an epoch of its driver
      stream (e.g. to record learning dynamics); its time is not counted in the cost.
    stock_layers: the model's `Problem.stock_layers`; FLOPs are counted on the step traced inside it.

  Returns:
    The final train state (replicated on the mesh; its parameters those `algorithm.select` chose, before
    `algorithm.finish`) and the accumulated `Cost`.

  Raises:
    NonFiniteLossError: a loss became NaN/inf; nothing is saved after the last finite step.
  """
  check_batch_size(options.batch_size, mesh)
  env = Env(mesh, options.batch_size, options.seed, stock_layers=stock_layers)
  t_derive = time.perf_counter()
  data = with_derived_sets(algorithm, data, params, env)
  setup = dataclasses.replace(setup or Cost())
  setup.add_setup(Cost.setup(time.perf_counter() - t_derive, env.spent.flops))
  for phase in algorithm.phases:
    for stream in phase.streams:
      if stream not in data or len(data[stream]) == 0:
        raise errors.UserError(f'algorithm {algorithm.name!r} needs a non-empty {stream!r} set')
  sizes = {k: len(v) for k, v in data.items()}
  n_steps = phase_steps(algorithm, sizes, options.batch_size)
  total = sum(n_steps)
  txs = algorithm.optimizers()
  phase_starts = np.concatenate([[0], np.cumsum(n_steps)]).astype(int)
  resume_step = checkpoints.latest_step() if checkpoints is not None else None
  # The optimizer state on disk belongs to the phase of the last step taken before it was saved.
  state = create_state(_optimizer_at(txs, n_steps, max((resume_step or 0) - 1, 0), algorithm.tx),
                       params, context, mesh)
  cost = setup
  meta = dict(meta or {})
  if resume_step is not None:
    state, saved = checkpoints.restore(ckpt_lib.abstract_like(state))
    cost = Cost(**saved['cost'])
    logging.info('%s: resumed from step %d of %d', algorithm.name, int(state.step), total)
  start = int(state.step)
  base_rng = jax.random.key(options.seed)
  rep = replicated(mesh)
  # Made by a jitted function (not device_put) so that multi-process runs get a global replicated array.
  step_rng = jax.jit(lambda t: jax.random.fold_in(jax.random.key(options.seed), t), out_shardings=rep)

  def batches_from(step0: int):
    for t, phase_index, host, examples in plan_batches(algorithm, data, n_steps, options.batch_size,
                                                       [options.seed], step0):
      yield t, phase_index, {k: to_device(v, mesh) for k, v in host.items()}, examples

  # One program per distinct (loss, streams): phases that repeat a loss (SCRUB's alternating passes) share it.
  compiled: dict[tuple[Any, tuple[str, ...]], tuple[Any, float]] = {}
  last_metrics: dict[str, jax.Array] | None = None
  last_step = start

  def check_finite(metrics, step):
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      raise errors.NonFiniteLossError(
          f'{algorithm.name}: loss is {loss} at step {step}; stopped without saving a checkpoint '
          '(lower the learning rate or check the data)')
    return loss

  def save(step):
    if checkpoints is not None:
      # A finite loss can still be followed by an update that overflows: never checkpoint such a state
      # (a resumed run would start from it).
      if not bool(all_finite(state.params, state.opt_state)):
        raise errors.NonFiniteLossError(
            f'{algorithm.name}: parameters are not finite after step {step}; stopped without saving a '
            'checkpoint (lower the learning rate or check the data)')
      checkpoints.save(step, state, dict(meta, cost=cost.to_json(), done=step >= total, total_steps=total))

  first = algorithm.phases[0] if algorithm.phases else None
  epoch_steps = math.ceil(sizes[first.streams[0]] / options.batch_size) if first and first.streams else 1
  t_log, step_log = time.perf_counter(), start
  loop_start = time.perf_counter()
  for t, phase_index, batch, examples in prefetch(batches_from(start), options.prefetch):
    phase = algorithm.phases[phase_index]
    if phase.tx is not None and t == phase_starts[phase_index] and t > 0:
      # A phase with its own optimizer starts from a fresh optimizer state (also when resumed right here).
      state = state.replace(opt_state=jax.jit(phase.tx.init, out_shardings=rep)(state.params))
    key = (phase.loss, phase.streams, txs[phase_index])
    if key not in compiled:
      t0 = time.perf_counter()
      rng_spec = jax.ShapeDtypeStruct(base_rng.shape, base_rng.dtype, sharding=rep)
      step_fn = make_step(phase, txs[phase_index])
      lowered = jax.jit(step_fn, donate_argnums=0).lower(state, batch, rng_spec)
      program = xla.compile(lowered, 'train')
      dt = time.perf_counter() - t0
      cost.compile_seconds += dt
      loop_start += dt  # Compilation is reported separately, not as step time.
      compiled[key] = (program, program_flops(lowered, step_fn, (state, batch, rng_spec), stock_layers))
    meta.setdefault('flops_per_step', {})[phase.name] = compiled[key][1]
    rng = step_rng(t)
    state, metrics = compiled[key][0](state, batch, rng)
    if last_metrics is not None:  # Checked one step behind so the host never stalls the device queue.
      check_finite(last_metrics, t - 1)
    last_metrics, last_step = metrics, t + 1
    cost.steps += 1
    cost.examples += examples
    cost.flops += compiled[key][1]
    if on_step is not None:
      on_step(t + 1)
    if on_epoch is not None and phase_index == 0 and (t + 1) % epoch_steps == 0:
      t_hook = time.perf_counter()
      on_epoch((t + 1) // epoch_steps, state.params)
      loop_start += time.perf_counter() - t_hook
    done_step = t + 1
    if done_step % options.log_every_steps == 0 or done_step == total:
      loss = check_finite(metrics, done_step)
      now = time.perf_counter()
      rate = (done_step - step_log) / max(now - t_log, 1e-9)
      eta = (total - done_step) / max(rate, 1e-9)
      extra = ' '.join(f'{k}={float(v):.4f}' for k, v in sorted(metrics.items()) if k != 'loss')
      logging.info('%s [%s] step %d/%d loss=%.4f %s | %.1f steps/s, ETA %.0fs', algorithm.name,
                   algorithm.phases[phase_index].name, done_step, total, loss, extra, rate, eta)
      t_log, step_log = now, done_step
    # A stage that selects its final parameters saves its last step only once they are chosen.
    if ((done_step % options.checkpoint_every_steps == 0 and done_step < total)
        or (done_step == total and algorithm.select is None)):
      check_finite(metrics, done_step)
      jax.block_until_ready(state)
      now = time.perf_counter()
      cost.seconds += now - loop_start
      save(done_step)
      loop_start = time.perf_counter()
  if last_metrics is not None:
    check_finite(last_metrics, last_step)
  if algorithm.select is not None and start < total:
    cost.seconds += time.perf_counter() - loop_start
    t_select, flops_before = time.perf_counter(), env.spent.flops
    state = state.replace(params=algorithm.select(state.params, state.opt_state, data, env))
    jax.block_until_ready(state)
    cost.add_setup(Cost.setup(time.perf_counter() - t_select, env.spent.flops - flops_before))
    save(total)
  if total == 0 and start == 0:
    # A training-free algorithm (SSD) still records that its stage finished, with its prepare cost.
    save(0)
  return state, cost


@jax.jit
def all_finite(*trees: PyTree) -> jax.Array:
  """True when every floating-point leaf of `trees` is finite (one device reduction, one host transfer)."""
  leaves = [x for x in jax.tree.leaves(trees) if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
  return jax.numpy.all(jax.numpy.stack([jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves])) if leaves \
      else jax.numpy.bool_(True)


def _optimizer_at(txs: Sequence[Any], n_steps: Sequence[int], step: int, default: Any) -> Any:
  """The optimizer in force at global `step` (`Algorithm.optimizers` per phase)."""
  if not txs:
    return default
  index = int(np.searchsorted(np.cumsum(n_steps), step, side='right'))
  return txs[min(index, len(txs) - 1)]


def finish_params(algorithm: base.Algorithm, params: PyTree, mesh: jax.sharding.Mesh,
                  stacked: bool = False) -> PyTree:
  """`algorithm.finish` applied to trained parameters (per model when `stacked`), replicated on `mesh`."""
  if algorithm.finish is None:
    return params
  fn = jax.vmap(algorithm.finish) if stacked else algorithm.finish
  return jax.jit(fn, out_shardings=replicated(mesh))(params)


# ---------------------------------------------------------------------------------------------------------
# Set-up computations of algorithms and prediction.

@dataclasses.dataclass
class Spent:
  """FLOPs of the programs an `Env` ran (XLA's estimate per call; the set-up part of a stage's cost)."""
  flops: float = 0.0


@dataclasses.dataclass(frozen=True)
class Env:
  """What an algorithm's `prepare` (and its other hooks) may use: the mesh, the batch size, data-parallel
  reductions and per-example outputs, and the training record of algorithms that need one (Amnesiac's
  summed updates of the original's forget batches, provided by the pipeline).

  Every program run through `jit`, `reduce` or `per_example` adds its FLOPs to `spent`, so that a set-up
  pass (SSD's Fisher importances, an influence vector) is part of the stage's FLOP cost, counted on the
  stock-layer program when `stock_layers` is given.
  """
  mesh: jax.sharding.Mesh
  batch_size: int
  seed: int = 0
  record: PyTree = None
  stock_layers: Callable[[], ContextManager[Any]] | None = None
  spent: Spent = dataclasses.field(default_factory=Spent)

  def jit(self, fn: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """`jax.jit(fn, **jit_kwargs)` whose every call adds the program's FLOPs to `spent` (counted once
    per distinct argument shapes)."""
    jitted = jax.jit(fn, **jit_kwargs)
    per_signature: dict[Any, float] = {}

    def call(*args):
      signature = (jax.tree.structure(args),
                   tuple((np.shape(x), str(getattr(x, 'dtype', type(x)))) for x in jax.tree.leaves(args)))
      if signature not in per_signature:
        per_signature[signature] = program_flops(jitted.lower(*args), fn, args, self.stock_layers)
      self.spent.flops += per_signature[signature]
      return jitted(*args)

    return call

  def per_example(self, fn: Callable[[PyTree, base.Batch], jax.Array], params: PyTree,
                  split: ds_lib.Split) -> np.ndarray:
    """`fn(params, batch) -> (B, ...)` for every example of `split`, in order (padded rows dropped), jitted
    once and data-parallel."""
    call = self.jit(fn, out_shardings=replicated(self.mesh))
    return predict_split(call, params, split, batch_size=self.batch_size, mesh=self.mesh)

  def reduce(self, fn: Callable[[PyTree, base.Batch], PyTree], params: PyTree, split: ds_lib.Split,
             extra: PyTree = None) -> PyTree:
    """Sum over the batches of `split` of `fn(params, batch[, extra])`, jitted once, data-parallel.

    `fn` must itself weight rows by `batch['mask']` (the last batch is padded). Used for gradients of a
    loss over a whole set (saliency masks, Fisher importances) without a private loop.
    """
    call = self.jit(fn if extra is None else (lambda p, b: fn(p, b, extra)), out_shardings=replicated(self.mesh))
    total = None
    n_batches = math.ceil(len(split) / self.batch_size)
    t0 = t_log = time.perf_counter()
    for k, lo in enumerate(range(0, len(split), self.batch_size)):
      pos = np.arange(lo, min(lo + self.batch_size, len(split)))
      mask = np.zeros(self.batch_size, np.float32)
      mask[:len(pos)] = 1.0
      batch = to_device(host_batch(split, np.pad(pos, (0, self.batch_size - len(pos))), mask), self.mesh)
      value = call(params, batch)
      total = value if total is None else jax.tree.map(jax.numpy.add, total, value)
      if time.perf_counter() - t_log > PROGRESS_SECONDS:  # Set-up passes (Fisher, saliency) can take minutes.
        jax.block_until_ready(total)
        now = time.perf_counter()
        logging.info('pass over %s: batch %d/%d | ETA %.0fs', split.name, k + 1, n_batches,
                     (now - t0) / (k + 1) * (n_batches - k - 1))
        t_log = now
    return total


# Prediction.

def make_predict(problem: base.Problem, mesh: jax.sharding.Mesh):
  """`predict(params, batch) -> logits`, jitted once; the logits come back replicated to every process."""

  def predict(params, batch):
    return base.forward(problem, params, batch, train=False)

  return jax.jit(predict, out_shardings=replicated(mesh), compiler_options=xla.compiler_options('eval'))


def predict_split(predict_fn, params: PyTree, split: ds_lib.Split, *, batch_size: int,
                  mesh: jax.sharding.Mesh) -> np.ndarray:
  """Logits (N, num_classes) for every example of `split`; the last batch is padded, not dropped."""
  check_batch_size(batch_size, mesh)
  n = len(split)
  outputs = []

  def host_batches():
    for lo in range(0, n, batch_size):
      pos = np.arange(lo, min(lo + batch_size, n))
      mask = np.zeros(batch_size, np.float32)
      mask[:len(pos)] = 1.0
      yield len(pos), to_device(host_batch(split, np.pad(pos, (0, batch_size - len(pos))), mask), mesh)

  pending = None
  for count, batch in prefetch(host_batches()):
    logits = predict_fn(params, batch)
    if pending is not None:
      outputs.append(np.asarray(pending[1])[:pending[0]])
    pending = (count, logits)
  if pending is not None:
    outputs.append(np.asarray(pending[1])[:pending[0]])
  return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)
