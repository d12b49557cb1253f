"""The experiment pipeline: original → forget set → retrain → unlearn → evaluate, in one workdir.

    workdir/
      config.json            the resolved config (a different config in the same workdir is an error)
      forget_manifest.json   forget ids, count, sha256, selector
      checkpoints/<stage>/   Orbax checkpoints of original, retrain and every algorithm
      outputs/<model>.npz    per-example cache: logits, loss, prediction, confidence, entropy, metadata
      outputs/costs.json, outputs/info.json, outputs/original_epochs.npz (per-epoch correctness)
      populations.json       (with --config.populations.n) forgetting quality and U-LiRA
      results.json, results.md, results.csv, plots/*.png

Each stage resumes from its latest checkpoint and is skipped when finished, so re-running the same command
continues an interrupted experiment. Only process 0 writes files; Orbax coordinates checkpoint writes.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging as std_logging
import os
import pathlib
import socket
import time
import zlib
from typing import Any, Mapping

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from medunlearn_jax import algorithms
from medunlearn_jax import checkpoints as ckpt_lib
from medunlearn_jax import engine
from medunlearn_jax import errors
from medunlearn_jax import models
from medunlearn_jax import sweeps
from medunlearn_jax.algorithms import base
from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.data import forget as forget_lib
from medunlearn_jax.data import selectors
from medunlearn_jax.evaluation import populations as populations_lib
from medunlearn_jax.evaluation import results as results_lib

# Config fields that may change between invocations on one workdir without invalidating what it holds:
# which algorithms to run (each stage checks its own hyper-parameters) and logging/IO cadence.
MUTABLE_FIELDS = ('algorithms', 'algo', 'log_every_steps', 'checkpoint_every_steps', 'eval_batch_size',
                  'distributed', 'report', 'populations', 'tuning', 'evaluation')
REFERENCE_STAGES = ('original', 'retrain')


def is_writer() -> bool:
  """Only process 0 writes files in multi-process runs."""
  return jax.process_index() == 0


def write_json(path: pathlib.Path, data: Any) -> None:
  """Atomic JSON write (`results.write_json`), by process 0 only."""
  if is_writer():
    results_lib.write_json(path, data)


def algorithm_names(config: ml_collections.ConfigDict) -> list[str]:
  """The unlearning algorithms a config asks for (`retrain`/`original` always run as references)."""
  raw = config.algorithms
  names = [n.strip() for n in (raw.split(',') if isinstance(raw, str) else raw) if n.strip()]
  names = [n for n in names if n not in REFERENCE_STAGES]
  for name in names:
    algorithms.get(name)  # Fails with the list of choices for an unknown name.
  if len(set(names)) != len(names):
    raise errors.ConfigError(f'algorithm listed twice in {raw!r}')
  return names


OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine')


def check_hparams(prefix: str, hp: ml_collections.ConfigDict, *, positive_epochs: bool = False) -> None:
  """One-line errors for training hyper-parameters that make no sense (any level of nesting): a rate or
  epoch count out of range, an unknown optimizer or schedule. `positive_epochs`: epochs must be > 0."""
  for key, value in hp.items():
    name = f'{prefix}.{key}'
    if isinstance(value, ml_collections.ConfigDict):
      check_hparams(name, value, positive_epochs=positive_epochs)
      continue
    if isinstance(value, bool) or value is None:
      continue
    bad = None
    if key == 'optimizer' and value not in OPTIMIZERS:
      bad = f'must be one of {OPTIMIZERS}'
    elif key == 'schedule' and value not in SCHEDULES:
      bad = f'must be one of {SCHEDULES}'
    elif isinstance(value, (int, float)):
      if not np.isfinite(value):
        bad = 'must be finite'
      elif key == 'lr' and value <= 0:
        bad = 'must be > 0'
      elif key.endswith('epochs') and (value < 0 or (positive_epochs and key == 'epochs' and value <= 0)):
        bad = 'must be > 0' if positive_epochs else 'must be >= 0'
      elif key == 'momentum' and not 0 <= value < 1:
        bad = 'must be in [0, 1)'
      elif key in ('weight_decay', 'grad_clip') or key.endswith('_steps'):
        bad = 'must be >= 0' if value < 0 else None
    if bad:
      raise errors.ConfigError(f'{name} {bad}, got {value!r}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks value ranges that config_flags cannot (unknown keys are already rejected there)."""
  fraction = config.forget.get('fraction')
  if fraction is not None and not 0.0 < fraction < 1.0:
    raise errors.ConfigError(f'forget.fraction must be in (0, 1), got {fraction}')
  selectors.get(config.forget.selector)  # Unknown selector names fail before any work.
  if config.batch_size <= 0 or config.eval_batch_size <= 0:
    raise errors.ConfigError('batch sizes must be positive')
  if config.evaluation.attack_seeds < 1 or config.evaluation.n_boot < 0:
    raise errors.ConfigError(f'evaluation.attack_seeds must be >= 1 and evaluation.n_boot >= 0, got '
                             f'{config.evaluation.attack_seeds} and {config.evaluation.n_boot}')
  models.make_model(config.model.name, 2)  # Unknown model names fail here, before any work.
  try:
    np.dtype(config.model.dtype)
  except TypeError:
    raise errors.ConfigError(f'model.dtype must be float32 or bfloat16, got {config.model.dtype!r}') from None
  if np.dtype(config.model.dtype).name not in ('float32', 'bfloat16'):
    raise errors.ConfigError(f'model.dtype must be float32 or bfloat16, got {config.model.dtype!r}')
  from medunlearn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  data_lib.family(config.dataset.name)
  check_hparams('train', config.train, positive_epochs=True)
  for key in ('log_every_steps', 'checkpoint_every_steps'):
    if key in config and config[key] <= 0:
      raise errors.ConfigError(f'{key} must be > 0, got {config[key]}')
  if config.populations.n < 0:
    raise errors.ConfigError(f'populations.n must be >= 0, got {config.populations.n}')
  for name in algorithm_names(config):
    check_hparams(f'algo.{name}', config.algo[name])
    entry = algorithms.get(name)
    if entry.check is not None:
      entry.check(config.algo[name], config.forget)
    if config.populations.n > 0 and not entry.in_populations:
      raise errors.ConfigError(f'{name} cannot run in populations (populations.n={config.populations.n}); '
                               'run it without populations or leave it out of this run')


def _identity(config: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in config.items() if k not in MUTABLE_FIELDS}


def _diff(a: Any, b: Any, prefix: str = '') -> list[str]:
  if isinstance(a, Mapping) and isinstance(b, Mapping):
    out = []
    for key in sorted(set(a) | set(b)):
      out += _diff(a.get(key, '<missing>'), b.get(key, '<missing>'), f'{prefix}{key}.')
    return out
  return [] if a == b else [f'{prefix[:-1]}: {a!r} -> {b!r}']


def check_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Refuses a workdir that holds a run of a different config (stages would mix two experiments)."""
  path = workdir / 'config.json'
  if not path.exists():
    return
  saved = json.loads(path.read_text())
  diffs = _diff(_identity(saved), _identity(json.loads(config.to_json_best_effort())))
  if diffs:
    raise errors.ConfigError(f'workdir {workdir} holds a run of a different config ({"; ".join(diffs[:4])}); '
                             'use a new --workdir')


LOCK_FILE = '.lock'
RUN_LOG = 'logs/run.log'
# Workdir -> (open descriptor holding its lock, whether this run created the workdir), in this process.
_HELD_LOCKS: dict[pathlib.Path, tuple[int, bool]] = {}
# Workdir -> the handler copying this process's log into its run log.
_RUN_LOGS: dict[pathlib.Path, std_logging.Handler] = {}


class _RunLogHandler(std_logging.FileHandler):
  """A file handler that stays silent when the file cannot be written (a full or read-only disk): that
  failure reaches the run itself and is reported there in one line, not as one traceback per log record."""

  def handleError(self, record: std_logging.LogRecord) -> None:
    del record


def log_to_workdir(workdir: pathlib.Path) -> None:
  """Appends everything logged (by us and by the libraries, tracebacks included) to `workdir/logs/run.log`
  until `release_workdir`; the console may show less (see `experiments/launch.py`)."""
  workdir = workdir.absolute()
  if not is_writer() or workdir in _RUN_LOGS:
    return
  path = workdir / RUN_LOG
  path.parent.mkdir(parents=True, exist_ok=True)
  handler = _RunLogHandler(path)
  handler.setFormatter(logging.PythonFormatter())
  std_logging.getLogger().addHandler(handler)
  _RUN_LOGS[workdir] = handler


def hold_workdir(workdir: pathlib.Path) -> None:
  """Takes an exclusive OS lock (`flock`) on `workdir/.lock`, held until `release_workdir` or the end of
  the process (the OS releases it on exit and on kill, so a crash never leaves a stale lock). A workdir
  another process holds is refused in one line naming that process. Only the writing process locks."""
  workdir = workdir.absolute()
  if not is_writer() or workdir in _HELD_LOCKS:
    return
  created = not workdir.exists()
  workdir.mkdir(parents=True, exist_ok=True)
  fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 256, 0).decode(errors='replace').strip() or 'another process'
    os.close(fd)
    raise errors.UserError(f'workdir {workdir} is in use by {holder}; wait for it to finish or use another '
                           '--workdir') from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f'process {os.getpid()} on {socket.gethostname()}'.encode(), 0)
  _HELD_LOCKS[workdir] = (fd, created)


def release_workdir(workdir: pathlib.Path) -> None:
  """Releases this process's lock on `workdir` (no-op when it holds none); a workdir this run created
  and left empty (it failed before writing anything) is removed with its lock file."""
  workdir = workdir.absolute()
  handler = _RUN_LOGS.pop(workdir, None)
  if handler is not None:
    std_logging.getLogger().removeHandler(handler)
    handler.close()
  fd, created = _HELD_LOCKS.pop(workdir, (None, False))
  if fd is None:
    return
  if created and [p.name for p in workdir.iterdir()] == [LOCK_FILE]:
    (workdir / LOCK_FILE).unlink()
    workdir.rmdir()
  os.close(fd)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min' if seconds >= 3600 else (
      f'{seconds // 60} min {seconds % 60:02d} s' if seconds >= 60 else f'{seconds} s')


class RunProgress:
  """The whole run's progress, logged after each stage: stages done, time spent, and an estimate of the time
  left, from the optimizer steps the remaining stages plan and the seconds per step this run has measured
  (compilation and set-up passes included; the evaluation at the end is not estimated)."""

  def __init__(self, planned_steps: Mapping[str, int]):
    self.planned = dict(planned_steps)
    self.done: list[str] = []
    self.start = time.perf_counter()
    self.seconds = 0.0  # Wall time of the stages this process trained (not loaded), and their steps.
    self.steps = 0

  def stage_done(self, stage: str, seconds: float, steps: int) -> str:
    """Records a finished stage (`steps` run by this process, 0 when loaded) and logs the run's progress."""
    if stage not in self.planned or stage in self.done:
      return ''
    self.done.append(stage)
    self.seconds += seconds
    self.steps += steps
    left = [s for s in self.planned if s not in self.done]
    message = (f'run: {len(self.done)} of {len(self.planned)} stages done ({stage} last), '
               f'{_duration(time.perf_counter() - self.start)} so far')
    if left and not any(self.planned[s] for s in left):
      message += f'; set-up passes left for {", ".join(left)} (no optimizer steps), then the evaluation'
    elif left and self.steps > 0:
      remaining = sum(self.planned[s] for s in left) * self.seconds / self.steps
      message += (f'; about {_duration(remaining)} left for {", ".join(left)} '
                  f'(ETA {time.strftime("%H:%M", time.localtime(time.time() + remaining))}), then the evaluation')
    elif not left:
      message += '; the evaluation next'
    logging.info('%s', message)
    return message


def planned_steps(exp: 'Experiment') -> dict[str, int]:
  """Optimizer steps each stage of the run plans: original, retrain and every algorithm, with the forget
  set's size (estimated from `forget.count` or `forget.fraction` where the selection waits for the
  original). A stage that derives its streams (RUM's levels) is counted on the whole forget set."""
  c = exp.config
  n_train = len(exp.splits['train'])
  n_forget = (len(exp.selection.ids) if exp.selection is not None
              else int(c.forget.get('count') or round(c.forget.get('fraction', 0.1) * n_train)))
  sizes = collections.defaultdict(lambda: n_forget, {k: len(v) for k, v in exp.splits.items()},
                                  retain=n_train - n_forget, forget=n_forget)
  plan = {}
  for stage, stream in (('original', 'train'), ('retrain', 'retain')):
    hp = ml_collections.ConfigDict(c.train.to_dict())
    hp.stream = stream
    plan[stage] = sum(engine.phase_steps(algorithms.get('erm').build(exp.problem, hp, sizes, c.batch_size),
                                         sizes, c.batch_size))
  for name in algorithm_names(c):
    plan[name] = sum(engine.phase_steps(algorithms.get(name).build(exp.problem, c.algo[name], sizes,
                                                                   c.batch_size), sizes, c.batch_size))
  return plan


@dataclasses.dataclass
class Experiment:
  """Everything the stages share, built once per run."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  info: ds_lib.DatasetInfo
  splits: dict[str, ds_lib.Split]
  problem: base.Problem
  mesh: jax.sharding.Mesh
  kernels: str = 'xla'  # The layers the model is built from ('xla' or 'native', `model_kernels`).
  # The forget set, when its selector does not need the trained original (all but 'difficulty'): made and
  # checked in `setup`, before anything is written.
  selection: forget_lib.ForgetManifest | None = None
  progress: RunProgress | None = None  # Set by `train_references`: the whole run's progress and ETA.

  @functools.cached_property
  def predict(self):
    """The run's one jitted prediction function: the per-epoch record, the difficulty scores and the
    evaluation all call it, so each batch shape compiles once per run."""
    return engine.make_predict(self.problem, self.mesh)

  @property
  def options(self) -> engine.RunOptions:
    c = self.config
    return engine.RunOptions(seed=c.seed, batch_size=c.batch_size, log_every_steps=c.log_every_steps,
                             checkpoint_every_steps=c.checkpoint_every_steps)


def model_kernels(config: ml_collections.ConfigDict) -> str:
  """The layers ('xla' or 'native') this run's model is built from: `config.model.kernels` resolved for
  the run's devices, dtype and algorithms (`models.resolve_kernels`)."""
  forward_mode = [n for n in algorithm_names(config) if algorithms.get(n).forward_mode]
  return models.resolve_kernels(config.model.name, config.model.kernels, dtype=config.model.dtype,
                                forward_mode=forward_mode)


def make_problem(config: ml_collections.ConfigDict, info: ds_lib.DatasetInfo, kernels: str = 'xla'
                 ) -> base.Problem:
  """The model of a config built with `kernels` layers, wrapped as the `Problem` algorithms work on."""

  def make_module(num_outputs):
    return models.make_model(config.model.name, num_outputs, dtype=config.model.dtype, kernels=kernels,
                             **config.model.get('kwargs', {}))

  return base.flax_problem(make_module, info.num_classes, info.image_shape,
                           multilabel=info.task == 'multi-label',
                           stock_layers=models.stock_layers if kernels == 'native' else contextlib.nullcontext)


def init_params(exp: Experiment) -> Any:
  """The initial parameters shared by the original and the retrained model (same seed, same recipe)."""
  abstract = jax.eval_shape(exp.problem.init_fn, jax.random.key(0))
  shardings = jax.tree.map(lambda _: engine.replicated(exp.mesh), abstract)
  return jax.jit(exp.problem.init_fn, out_shardings=shardings)(jax.random.key(exp.config.seed))


def _normalised(value: Any) -> Any:
  return json.loads(json.dumps(value, default=results_lib._json_default))  # pylint: disable=protected-access


def stage_hparams(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """The hyper-parameters each stage of a config trains with (what its checkpoints record)."""
  out = {'original': dict(config.train.to_dict(), stream='train'),
         'retrain': dict(config.train.to_dict(), stream='retain')}
  for name in algorithm_names(config):
    out[name] = config.algo[name].to_dict()
  return _normalised(out)


def check_stages(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Refuses to continue a stage whose checkpoints were made with other hyper-parameters."""
  for stage, hparams in stage_hparams(config).items():
    directory = workdir / 'checkpoints' / stage
    if not directory.exists():
      continue
    checkpoints = ckpt_lib.StageCheckpoints(directory)
    try:
      saved = checkpoints.read_meta()
    finally:
      checkpoints.close()
    if saved is not None and _normalised(saved.get('hparams')) != hparams:
      raise errors.ConfigError(f'workdir already holds stage {stage!r} trained with different '
                               'hyper-parameters; use a new --workdir')


def run_stage(exp: Experiment, stage: str, algorithm: base.Algorithm, data: Mapping[str, ds_lib.Split],
              params: Any, context: Any, on_step=None, setup: engine.Cost | None = None, on_epoch=None
              ) -> tuple[Any, engine.Cost]:
  """Runs (or resumes, or skips when finished) one stage with its own checkpoint folder."""
  checkpoints = ckpt_lib.StageCheckpoints(exp.workdir / 'checkpoints' / stage)
  meta = {'stage': stage, 'algorithm': algorithm.name, 'hparams': _normalised(algorithm.hparams)}
  t0 = time.perf_counter()
  try:
    saved = checkpoints.read_meta()
    logging.info('stage %s: %s', stage, 'starting' if saved is None else
                 ('finished earlier, loading' if saved.get('done') else 'resuming'))
    params, cost = engine.run(algorithm, data, params, context, mesh=exp.mesh, options=exp.options,
                              checkpoints=checkpoints, meta=meta, on_step=on_step, setup=setup,
                              on_epoch=on_epoch, stock_layers=exp.problem.stock_layers)
  finally:
    checkpoints.close()
  if exp.progress is not None:
    steps_before = int(((saved or {}).get('cost') or {}).get('steps', 0))
    exp.progress.stage_done(stage, time.perf_counter() - t0, cost.steps - steps_before)
  return params, cost


def erm_algorithm(exp: Experiment, stream: str) -> base.Algorithm:
  """The shared training recipe (`config.train`) on one stream: 'train' (original) or 'retain' (retrain)."""
  hp = ml_collections.ConfigDict(exp.config.train.to_dict())
  hp.stream = stream
  return algorithms.get('erm').build(exp.problem, hp, {stream: len(exp.splits[stream])}, exp.config.batch_size)


def difficulty_scores(exp: Experiment, params: Any) -> np.ndarray:
  """Per-example difficulty of the training split: the original model's cross-entropy (higher = harder)."""
  from medunlearn_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  logits = engine.predict_split(exp.predict, params, exp.splits['train'],
                                batch_size=exp.config.eval_batch_size, mesh=exp.mesh)
  return metrics.per_example_loss(logits, exp.splits['train'].labels)


def select_forget_set(config: ml_collections.ConfigDict, workdir: pathlib.Path, train: ds_lib.Split,
                      difficulty: np.ndarray | None = None) -> forget_lib.ForgetManifest:
  """The configured forget selection, checked (ids, sizes, classes left in retain) and compared with the
  workdir's manifest, if any: a different selection is refused. Writes nothing."""
  selection = selectors.select(train, config.forget, seed=config.seed, difficulty=difficulty, ignore_unused=True)
  manifest = forget_lib.read_manifest(workdir)  # Verifies its own sha256.
  if manifest is not None and manifest.sha256 != selection.sha256:
    raise errors.ConfigError(f'{forget_lib.MANIFEST_NAME} in {workdir} does not match the configured '
                             'forget selection; use a new --workdir')
  return selection


def forget_manifest(exp: Experiment, original_params: Any) -> forget_lib.ForgetManifest:
  """Selects the forget set; reuses the workdir's manifest when it is the same selection, else refuses."""
  c = exp.config
  selection = exp.selection
  if selection is None:
    selection = select_forget_set(c, exp.workdir, exp.splits['train'], difficulty_scores(exp, original_params))
  manifest = forget_lib.read_manifest(exp.workdir)  # Verifies its own sha256.
  if manifest is not None:
    return manifest  # `select_forget_set` checked that it is this selection.
  if is_writer():
    forget_lib.write_manifest(selection, exp.workdir)
  logging.info('forget set (%s): %d of %d training examples (sha256 %s…)', selection.selector,
               len(selection.ids), len(exp.splits['train']), selection.sha256[:12])
  return selection


def setup(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Experiment:
  """Validates the config and workdir, loads the data and builds the model; writes config.json."""
  from medunlearn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  validate(config)
  kernels = model_kernels(config)  # 'native' where it cannot run fails here, before any work.
  workdir = pathlib.Path(workdir).absolute()
  check_workdir(config, workdir)
  check_stages(config, workdir)
  hold_workdir(workdir)  # A second launch on this workdir is refused here, in seconds.
  # Again under the lock: another run may have just written its config or stages.
  check_workdir(config, workdir)
  check_stages(config, workdir)
  if jax.process_count() > 1:  # Process 0 builds the dataset; the others read what it built.
    if is_writer():
      data_lib.prepare(config.dataset)
    multihost_utils.sync_global_devices('dataset prepared')
  info, splits = data_lib.load(config.dataset)
  mesh = engine.make_mesh()
  engine.check_batch_size(config.batch_size, mesh)
  engine.check_batch_size(config.eval_batch_size, mesh)
  # A bad forget request (ids not in the split, duplicates, a class left empty...) fails here, in seconds and
  # before anything is written; only the difficulty selector must wait for the trained original.
  selection = (None if config.forget.selector == 'difficulty'
               else select_forget_set(config, workdir, splits['train']))
  if is_writer():
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / 'config.json', json.loads(config.to_json_best_effort()))
    log_to_workdir(workdir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('workdir ready')
  logging.info('dataset %s %dpx: %s; %d devices', config.dataset.name, config.dataset.image_size,
               {k: len(v) for k, v in splits.items()}, mesh.size)
  logging.info('model %s (%s) with %s layers (%s, from model.kernels=%r)', config.model.name, config.model.dtype,
               'stock Flax' if kernels == 'xla' else 'native CPU-kernel', kernels, config.model.kernels)
  return Experiment(config, workdir, info, splits, make_problem(config, info, kernels), mesh, kernels, selection)


def train_references(config: ml_collections.ConfigDict, workdir: str | os.PathLike
                     ) -> tuple[Experiment, dict[str, Any], dict[str, engine.Cost]]:
  """Set-up, the original model, the forget set and the retrained model (each resumed or loaded if done)."""
  exp = setup(config, workdir)
  exp.progress = RunProgress(planned_steps(exp))
  init = init_params(exp)
  trained: dict[str, Any] = {}
  costs: dict[str, engine.Cost] = {}
  trained['original'], costs['original'] = run_stage(exp, 'original', erm_algorithm(exp, 'train'),
                                                     exp.splits, init, {}, on_epoch=epoch_recorder(exp))
  manifest = forget_manifest(exp, trained['original'])
  retain, forget = forget_lib.split_train(exp.splits['train'], manifest)
  exp.splits.update(retain=retain, forget=forget)
  forget_lib.check_disjoint(retain, manifest)  # The retrained model provably never sees forgotten data.
  trained['retrain'], costs['retrain'] = run_stage(exp, 'retrain', erm_algorithm(exp, 'retain'),
                                                   {'retain': retain}, init, {})
  return exp, trained, costs


EPOCHS_FILE = results_lib.EPOCHS_FILE


def epoch_recorder(exp: Experiment):
  """Records, after every epoch of the original model, which training examples it classifies correctly
  (learning dynamics for the 'first stably learned epoch' difficulty, after Toneva et al., ICLR 2019).

  Each epoch is written to `outputs/original_epochs.npz` as it completes, so a resumed run keeps the
  epochs recorded before the interruption.
  """
  from medunlearn_jax.algorithms import base as base_lib  # pylint: disable=g-import-not-at-top
  path = exp.workdir / 'outputs' / EPOCHS_FILE
  predict = exp.predict
  train = exp.splits['train']

  def record(epoch: int, params: Any) -> None:
    logits = engine.predict_split(predict, params, train, batch_size=exp.config.eval_batch_size, mesh=exp.mesh)
    correct = np.asarray(base_lib.correct(jnp.asarray(logits), jnp.asarray(train.labels),
                                          exp.problem.multilabel)) > 0
    if not is_writer():
      return
    epochs = read_epochs(exp.workdir) or {'ids': train.ids, 'epochs': {}}
    epochs['epochs'][epoch] = correct
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp.npz')
    np.savez(tmp, ids=train.ids, **{f'epoch_{e}': v for e, v in epochs['epochs'].items()})
    os.replace(tmp, path)

  return record


def read_epochs(workdir: pathlib.Path) -> dict[str, Any] | None:
  """{'ids': (N,), 'epochs': {epoch: (N,) bool}} recorded by `epoch_recorder`, or None."""
  path = workdir / 'outputs' / EPOCHS_FILE
  if not path.exists():
    return None
  with np.load(path, allow_pickle=False) as data:
    return {'ids': data['ids'], 'epochs': {int(k.split('_')[1]): data[k] for k in data.files if k != 'ids'}}


def make_algorithm(exp: Experiment, name: str, hparams: ml_collections.ConfigDict | None = None
                   ) -> base.Algorithm:
  """The registered algorithm `name` built for this run's problem, set sizes and batch size."""
  sizes = {k: len(v) for k, v in exp.splits.items()}
  return algorithms.get(name).build(exp.problem, hparams or exp.config.algo[name], sizes, exp.config.batch_size)


def prepare_algorithm(exp: Experiment, algorithm: base.Algorithm, original_params: Any
                      ) -> tuple[Any, Any, engine.Cost]:
  """Runs `algorithm.prepare`: (starting parameters, context, what it cost: seconds and FLOPs)."""
  c = exp.config
  rng = jax.random.fold_in(jax.random.key(c.seed), zlib.crc32(algorithm.name.encode()))
  record = (training_record(exp, original_params) if algorithms.get(algorithm.name).needs_record else None)
  env = engine.Env(exp.mesh, c.batch_size, c.seed, record=record, stock_layers=exp.problem.stock_layers)
  t0 = time.perf_counter()
  start, context = algorithm.prepare(original_params, exp.splits, rng, env)
  jax.block_until_ready((start, context))
  return start, context, engine.Cost.setup(time.perf_counter() - t0, env.spent.flops)


def training_record(exp: Experiment, original_params: Any) -> Any:
  """Amnesiac's record of the original's training (`amnesiac.record_training`): the original's run replayed
  in its own stage, `checkpoints/amnesiac_record` (resumable; loaded when finished), summing the updates
  of its steps whose batch held a forget example."""
  from medunlearn_jax.algorithms import amnesiac  # pylint: disable=g-import-not-at-top
  stage = 'amnesiac_record'
  checkpoints = ckpt_lib.StageCheckpoints(exp.workdir / 'checkpoints' / stage)
  forget_ids = exp.splits['forget'].ids
  meta = {'stage': stage, 'algorithm': 'erm', 'hparams': _normalised(exp.config.train.to_dict()),
          'forget_ids_sha256': hashlib.sha256(np.sort(forget_ids).astype(np.int64).tobytes()).hexdigest()}
  try:
    saved = checkpoints.read_meta()
    if saved is not None and saved.get('forget_ids_sha256') != meta['forget_ids_sha256']:
      raise errors.ConfigError(f'{stage} in {exp.workdir} was recorded for another forget set; use a new --workdir')
    logging.info('stage %s: %s', stage, 'replaying the original\'s training to record its forget-batch updates'
                 if saved is None else ('finished earlier, loading' if saved.get('done') else 'resuming'))
    record = amnesiac.record_training(erm_algorithm(exp, 'train'), exp.splits, init_params(exp), forget_ids,
                                      mesh=exp.mesh, options=exp.options, checkpoints=checkpoints, meta=meta)
  finally:
    checkpoints.close()
  gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(record.params),
                                                            jax.tree.leaves(original_params)))
  logging.info('amnesiac record: %d of %d steps held forget examples; the replay ends %.3g (max |Δθ|) from '
               'the original (0 when replayed on the devices that trained it)', record.hits, record.steps, gap)
  return record


def build_algorithm(exp: Experiment, name: str, original_params: Any,
                    hparams: ml_collections.ConfigDict | None = None
                    ) -> tuple[base.Algorithm, Any, Any, engine.Cost]:
  """An algorithm of the run with its starting parameters, context and what `prepare` cost."""
  algorithm = make_algorithm(exp, name, hparams)
  return (algorithm, *prepare_algorithm(exp, algorithm, original_params))


def load_finished_stage(exp: Experiment, stage: str, algorithm: base.Algorithm
                        ) -> tuple[Any, engine.Cost] | None:
  """(parameters, cost) of a stage that finished earlier with the same hyper-parameters, else None.

  Loading only the parameters skips the algorithm's `prepare` (SSD's Fisher pass, SalUn's saliency mask...),
  which a resumed study would otherwise repeat for every finished stage.
  """
  checkpoints = ckpt_lib.StageCheckpoints(exp.workdir / 'checkpoints' / stage)
  try:
    saved = checkpoints.read_meta()
    if not saved or not saved.get('done') or _normalised(saved.get('hparams')) != _normalised(algorithm.hparams):
      return None
    params, saved = checkpoints.restore_params(engine.replicated(exp.mesh))
  finally:
    checkpoints.close()
  logging.info('stage %s: finished earlier, loaded without re-running prepare', stage)
  if exp.progress is not None:
    exp.progress.stage_done(stage, 0.0, 0)
  return engine.finish_params(algorithm, params, exp.mesh), engine.Cost(**saved['cost'])


def run_algorithm_stage(exp: Experiment, name: str, original_params: Any) -> tuple[Any, engine.Cost]:
  """Runs or resumes one algorithm's stage from the original model; a finished one is only loaded."""
  algorithm = make_algorithm(exp, name)
  finished = load_finished_stage(exp, name, algorithm)
  if finished is not None:
    return finished
  start, context, setup = prepare_algorithm(exp, algorithm, original_params)
  return run_stage(exp, name, algorithm, exp.splits, start, context, setup=setup)


def run_experiment(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs the whole pipeline and returns the results dict (also written to workdir/results.json).

  The workdir is locked for the run (`hold_workdir`): a second run on it, in any process, is refused.
  """
  try:
    exp, trained, costs = train_references(config, workdir)
    for name in algorithm_names(exp.config):
      trained[name], costs[name] = run_algorithm_stage(exp, name, trained['original'])
    if exp.config.populations.n > 0:
      write_json(exp.workdir / 'populations.json', run_populations(exp, trained['original']))
    return evaluate(exp, trained, costs)
  finally:
    release_workdir(pathlib.Path(workdir))


def run_populations(exp: Experiment, original_params: Any) -> dict[str, Any]:
  """N retrained and N unlearned models per algorithm, trained side by side (one vmapped program each),
  compared per forget example: the NeurIPS 2023 challenge's forgetting quality and U-LiRA."""
  c = exp.config
  seeds = [c.seed * 1000 + 1 + i for i in range(c.populations.n)]  # Disjoint from the main run's seed.
  kwargs = dict(batch_size=c.eval_batch_size, mesh=exp.mesh)
  retrained, cost = sweeps.run_population(erm_algorithm(exp, 'retain'), {'retain': exp.splits['retain']}, None,
                                          {}, mesh=exp.mesh, options=exp.options, seeds=seeds,
                                          init_fn=exp.problem.init_fn, stock_layers=exp.problem.stock_layers)
  reference = populations_lib.population_outputs(exp.problem, retrained, exp.splits, **kwargs)
  out = {'seeds': seeds, 'retrain_cost': cost.to_json(), 'models': {}}
  for name in algorithm_names(c):
    algorithm, start, context, _ = build_algorithm(exp, name, original_params)
    stacked, cost = sweeps.run_population(algorithm, exp.splits, start, context, mesh=exp.mesh,
                                          options=exp.options, seeds=seeds, stock_layers=exp.problem.stock_layers)
    outputs = populations_lib.population_outputs(exp.problem, stacked, exp.splits, **kwargs)
    out['models'][name] = dict(populations_lib.compare(outputs, reference, exp.splits), cost=cost.to_json())
    logging.info('population of %d %s models: forgetting quality %.3f', len(seeds), name,
                 out['models'][name]['forgetting_quality'])
  return out


def evaluate(exp: Experiment, trained: Mapping[str, Any], costs: Mapping[str, engine.Cost]) -> dict[str, Any]:
  """Predicts every split with every model, caches per-example outputs, computes and reports the results.

  One compiled prediction program serves all models and splits; each model's per-example outputs (logits,
  loss, prediction, confidence, entropy, metadata) go to `outputs/<model>.npz`, with the training-set
  difficulty in the original model's. Every metric of results.json is then computed from those caches and
  the stage costs alone, as `results_lib.evaluate_workdir` (and `python -m experiments.report`) would.
  """
  # pylint: disable=g-import-not-at-top
  from medunlearn_jax.evaluation import cache as cache_lib
  from medunlearn_jax.evaluation import report as report_lib
  # pylint: enable=g-import-not-at-top
  predict = exp.predict
  caches = {}
  for model_name, params in trained.items():
    logits = {s: engine.predict_split(predict, params, exp.splits[s], batch_size=exp.config.eval_batch_size,
                                      mesh=exp.mesh) for s in results_lib.EVAL_SPLITS}
    caches[model_name] = cache_lib.build_cache(logits, exp.splits)
  if 'original' in caches:
    # Learning-dynamics difficulty needs the per-epoch correctness recorded while training the original.
    epochs = read_epochs(exp.workdir)
    if epochs and epochs['epochs']:
      matrix = np.stack([epochs['epochs'][e] for e in sorted(epochs['epochs'])])
      caches['original'] = cache_lib.add_difficulty(caches['original'], correct_per_epoch=matrix,
                                                    epoch_ids=epochs['ids'])
    else:
      caches['original'] = cache_lib.add_difficulty(caches['original'])
  cost_json = {k: v.to_json() for k, v in costs.items()}
  c = exp.config
  info = {'dataset': exp.info.name, 'task': exp.info.task, 'num_classes': exp.info.num_classes,
          'class_names': list(exp.info.class_names),
          'anchor': ({'test_accuracy': exp.info.anchor_accuracy, 'source': exp.info.anchor_source}
                     if exp.info.anchor_accuracy is not None else None),
          'config': {'dataset': c.dataset.name, 'image_size': c.dataset.image_size, 'model': c.model.name,
                     'epochs': c.train.epochs,
                     'dtype': c.model.dtype, 'kernels': exp.kernels, 'platform': jax.default_backend(),
                     'seed': c.seed, 'forget_count': len(exp.splits['forget']), 'devices': exp.mesh.size,
                     'attack_seeds': c.evaluation.attack_seeds, 'n_boot': c.evaluation.n_boot}}
  if is_writer():
    results_lib.save_run(exp.workdir, caches, cost_json, info)
  results = results_lib.evaluate_caches(caches, cost_json, info=info,
                                        populations=results_lib.load_populations(exp.workdir), seed=c.seed,
                                        n_boot=c.evaluation.n_boot, attack_seeds=c.evaluation.attack_seeds)
  leftover = results['evaluation']['not_in_results'] = results_lib.files_not_in_results(exp.workdir, list(caches))
  if leftover:
    logging.warning('not in these results, but kept in %s: %s (delete them, or name the algorithms in '
                    '--config.algorithms again: finished stages are loaded, not retrained)', exp.workdir,
                    '; '.join(f'{name} ({", ".join(files)})' for name, files in leftover.items()))
  if is_writer():
    results_lib.write_json(exp.workdir / results_lib.RESULTS_FILE, results)
    report_lib.write_report(exp.workdir, results, plots=c.get('report', True))
  print(report_lib.markdown_table(results))
  signal = report_lib.forget_signal_text(results)
  if signal:
    print('\n' + signal)
  return results
