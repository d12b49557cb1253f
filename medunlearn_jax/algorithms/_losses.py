"""Composable pieces of unlearning algorithms: loss terms, their sum, an ℓ1 transformation, teachers.

A *term* maps the `Outputs` of one loss evaluation to `(weighted value, metrics)`; `combine(problem, *terms)`
sums terms into one `base.LossFn`. Terms that read the same stream share one forward pass of the student (and
so one backward pass), e.g. SCRUB's min-step `combine(problem, kl_term('retain'), ce_term('retain'))` costs a
single student pass over the retain batch. Teacher logits are read from parameters held in the context.

Composition, e.g. NegGrad+ with ℓ1 sparsity (Jia et al., NeurIPS 2023) added:

    loss = combine(problem, neggrad_plus.terms(alpha=0.95), l1_term(1e-4))
    phase = base.Phase(loss, streams=('retain', 'forget'), epochs=2.0)
    algorithm = build('neggrad_plus_l1', (phase,), hp, sizes, batch_size)  # hp: neggrad_plus's config.

A weight that follows the step count (ℓ1-sparse's decaying γ) cannot live in the loss, which does not see
the step; `l1_penalty(schedule)` adds the same gradient, γ_t·sign(θ), as an Optax transformation instead:
`optax.chain(l1_penalty(schedule), tx)` composes with any loss.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import optax

from medunlearn_jax import algorithms
from medunlearn_jax import errors
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import erm

PyTree = Any
Metrics = dict[str, jax.Array]
TEACHER = 'teacher'  # Context key of the original model's parameters.
RANDOM_TEACHER = 'random_teacher'  # Context key of a randomly initialised model (Bad Teacher).


class Outputs:
  """What terms read during one loss evaluation: batches, context, rng and memoised logits.

  Created afresh by `combine` at every call (inside the trace), so the memo never outlives a step.
  """

  def __init__(self, problem: base.Problem, params: PyTree, batches: Mapping[str, base.Batch],
               context: PyTree, rng: jax.Array):
    self.problem = problem
    self.params = params
    self.batches = batches
    self.context = context
    self.rng = rng
    self._student: dict[str, jax.Array] = {}
    self._teacher: dict[tuple[str, str], jax.Array] = {}

  def logits(self, stream: str) -> jax.Array:
    """The student's (differentiated) logits on the batch of `stream`."""
    if stream not in self._student:
      self._student[stream] = base.forward(self.problem, self.params, self.batches[stream])
    return self._student[stream]

  def teacher_logits(self, teacher: str, stream: str) -> jax.Array:
    """Logits of the parameters `context[teacher]` on `stream`, in eval mode and outside the gradient."""
    key = (teacher, stream)
    if key not in self._teacher:
      if teacher not in self.context:
        raise KeyError(f'loss needs context[{teacher!r}]; the algorithm\'s prepare must provide it '
                       f'(context holds {sorted(self.context)})')
      params = jax.lax.stop_gradient(self.context[teacher])
      self._teacher[key] = base.forward(self.problem, params, self.batches[stream], train=False)
    return self._teacher[key]

  def mean(self, stream: str, per_example: jax.Array) -> jax.Array:
    """Masked mean over the real rows of `stream`'s batch."""
    return base.masked_mean(per_example, self.batches[stream]['mask'])


Term = Callable[[Outputs], tuple[jax.Array, Metrics]]
Terms = Union[Term, Sequence['Terms']]


def _flatten(terms: Terms) -> list[Term]:
  if callable(terms):
    return [terms]
  return [t for group in terms for t in _flatten(group)]


def combine(problem: base.Problem, *terms: Terms) -> base.LossFn:
  """The loss Σ terms: one `base.LossFn` (nested sequences of terms are flattened)."""
  flat = _flatten(terms)
  if not flat:
    raise ValueError('combine needs at least one term')

  def loss(params, batches, context, rng):
    outputs = Outputs(problem, params, batches, context, rng)
    total, metrics = jnp.zeros((), jnp.float32), {}
    for term in flat:
      value, term_metrics = term(outputs)
      total = total + value
      metrics.update(term_metrics)
    return total, metrics

  return loss


# ---------------------------------------------------------------------------------------------------------
# Terms.

def ce_term(stream: str, weight: float = 1.0) -> Term:
  """`weight · CE(stream)`; a negative weight is gradient ascent (NegGrad)."""

  def term(out: Outputs):
    logits, batch = out.logits(stream), out.batches[stream]
    ce = out.mean(stream, base.per_example_loss(logits, batch['label'], out.problem.multilabel))
    acc = out.mean(stream, base.correct(logits, batch['label'], out.problem.multilabel))
    return weight * ce, {f'{stream}_ce': ce, f'{stream}_acc': acc}

  return term


LABEL_DRAWS = ('official', 'other_class')


def check_label_draw(draw: str) -> None:
  if draw not in LABEL_DRAWS:
    raise errors.ConfigError(f'label_draw must be one of {LABEL_DRAWS}, got {draw!r}')


def random_labels(rng: jax.Array, labels: jax.Array, num_classes: int, multilabel: bool,
                  draw: str = 'official') -> jax.Array:
  """Random labels for the forget set.

  `draw='official'`: uniform over all C classes, the true one included (`randint(0, C)` in the reference
  code of Graves et al. and SalUn), so on a binary task half the labels stay true. `'other_class'`: uniform
  over the C − 1 other classes (`label + U{1..C-1} mod C`), a deterministic flip on a binary task and a
  much stronger forgetting signal. Multi-label targets are redrawn as fair coins either way.
  """
  check_label_draw(draw)
  if multilabel:
    return jax.random.bernoulli(rng, 0.5, labels.shape).astype(labels.dtype)
  if draw == 'official':
    return jax.random.randint(rng, labels.shape, 0, num_classes, dtype=labels.dtype)
  shift = jax.random.randint(rng, labels.shape, 1, max(num_classes, 2), dtype=labels.dtype)
  return (labels + shift) % num_classes


def random_label_term(stream: str, weight: float = 1.0, draw: str = 'official') -> Term:
  """`weight · CE(stream, random labels)`, relabelled afresh at every step from the step's rng
  (`random_labels` describes `draw`)."""
  check_label_draw(draw)

  def term(out: Outputs):
    batch = out.batches[stream]
    rng = jax.random.fold_in(out.rng, zlib.crc32(stream.encode()))
    labels = random_labels(rng, batch['label'], out.problem.num_classes, out.problem.multilabel, draw)
    ce = out.mean(stream, base.per_example_loss(out.logits(stream), labels, out.problem.multilabel))
    true_acc = out.mean(stream, base.correct(out.logits(stream), batch['label'], out.problem.multilabel))
    return weight * ce, {f'{stream}_random_ce': ce, f'{stream}_acc': true_acc}

  return term


def kl_divergence(teacher_logits: jax.Array, student_logits: jax.Array, temperature: float = 1.0,
                  multilabel: bool = False) -> jax.Array:
  """Per-example KL(teacher ‖ student) of temperature-softened outputs, times T² (Hinton et al., 2015).

  Multi-label outputs are independent Bernoullis: the mean over labels of their KLs.
  """
  t, s = teacher_logits / temperature, student_logits / temperature
  if multilabel:
    p = jax.nn.sigmoid(t)
    kl = (p * (jax.nn.log_sigmoid(t) - jax.nn.log_sigmoid(s))
          + (1 - p) * (jax.nn.log_sigmoid(-t) - jax.nn.log_sigmoid(-s)))
    kl = jnp.mean(kl, axis=-1)
  else:
    log_p = jax.nn.log_softmax(t)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(s)), axis=-1)
  return kl * temperature ** 2


def kl_term(stream: str, teacher: str = TEACHER, weight: float = 1.0, temperature: float = 1.0) -> Term:
  """`weight · KL(context[teacher] ‖ student)` on `stream`; negative weight pushes the student away."""

  def term(out: Outputs):
    kl = out.mean(stream, kl_divergence(out.teacher_logits(teacher, stream), out.logits(stream),
                                        temperature, out.problem.multilabel))
    return weight * kl, {f'{stream}_kl_{teacher}': kl}

  return term


def l1_norm(params: PyTree) -> jax.Array:
  return sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(params))


def l1_term(weight: float) -> Term:
  """`weight · ‖θ‖₁` over every parameter (Jia et al., NeurIPS 2023), constant weight."""

  def term(out: Outputs):
    norm = l1_norm(out.params)
    return weight * norm, {'l1_norm': norm}

  return term


# ---------------------------------------------------------------------------------------------------------
# Gradient transformations.

def l1_penalty(weight: float | optax.Schedule) -> optax.GradientTransformation:
  """Adds `weight_t · sign(θ)` to the gradient: the (sub)gradient of `weight_t · ‖θ‖₁` added to the loss.

  Place it first in a chain so that clipping, weight decay and momentum see it exactly as they would see
  the loss term; `weight` may be a schedule of the update count.
  """

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('l1_penalty needs the parameters in update()')
    w = weight(state.count) if callable(weight) else weight
    updates = jax.tree.map(lambda g, p: g + (w * jnp.sign(p)).astype(g.dtype), updates, params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))

  return optax.GradientTransformation(init, update)


def epoch_linear_decay(value: float, epochs: float, steps_per_epoch: int) -> optax.Schedule:
  """`value · (1 − e / epochs)` during epoch e = ⌊t / steps_per_epoch⌋: the per-epoch linear decay of
  ℓ1-sparse unlearning's γ (Jia et al., NeurIPS 2023, reference code)."""

  def schedule(count):
    epoch = jnp.floor_divide(count, steps_per_epoch).astype(jnp.float32)
    return value * jnp.maximum(1.0 - epoch / max(epochs, 1e-9), 0.0)

  return schedule


# ---------------------------------------------------------------------------------------------------------
# Hyper-parameters, data plans and set-up.

def hparams(search_space: Mapping[str, Sequence[Any]], **fields: Any) -> ml_collections.ConfigDict:
  """An algorithm's hyper-parameters: the optimizer fields `erm.sgd_for` reads, then the algorithm's own.

  Common fields: optimizer ('sgd' | 'adam' | 'adamw'), lr, momentum (SGD), weight_decay (coupled L2 for
  sgd/adam as in torch, decoupled for adamw), schedule ('cosine' | 'constant', over all phases), warmup_epochs, epochs (passes over the first phase's driver
  stream), grad_clip (global norm, 0 = off). `search_space` maps field names to the values a tuning study
  tries.
  """
  config = {'optimizer': 'sgd', 'lr': 0.01, 'momentum': 0.9, 'weight_decay': 5e-4, 'schedule': 'cosine',
            'warmup_epochs': 0.0, 'epochs': 1.0, 'grad_clip': 0.0}
  config.update(fields)
  unknown = set(search_space) - set(config)
  if unknown:
    raise ValueError(f'search_space names unknown hyper-parameters {sorted(unknown)}')
  config['search_space'] = {k: list(v) for k, v in search_space.items()}
  return ml_collections.ConfigDict(config)


def phase_steps(phase: base.Phase, sizes: Mapping[str, int], batch_size: int) -> int:
  """Optimizer steps of one phase (the engine's rule: `steps`, else epochs of the driver stream)."""
  if phase.steps is not None:
    return int(phase.steps)
  return max(1, int(round(phase.epochs * algorithms.steps_per_epoch(sizes[phase.streams[0]], batch_size))))


def build(name: str, phases: Sequence[base.Phase], hp: Any, sizes: Mapping[str, int], batch_size: int, *,
          prepare: Callable[..., tuple[PyTree, PyTree]] = base.no_prepare,
          penalty: optax.GradientTransformation | None = None) -> base.Algorithm:
  """An algorithm whose phases share one optimizer made from the common hyper-parameters (`erm.sgd_for`),
  its learning-rate schedule spanning every phase; `penalty` is chained in front of it (e.g. `l1_penalty`)."""
  total = sum(phase_steps(p, sizes, batch_size) for p in phases)
  tx = erm.sgd_for(hp, total, algorithms.steps_per_epoch(sizes[phases[0].streams[0]], batch_size))
  if penalty is not None:
    tx = optax.chain(penalty, tx)
  return base.Algorithm(name=name, phases=tuple(phases), tx=tx, prepare=prepare, hparams=hp.to_dict())


def union_shares(counts: Mapping[str, float]) -> dict[str, float]:
  """Each set's share of the union of the sets, `counts[s] / Σ counts`.

  Weighting one batch per set by its share makes the loss equal, in expectation, to the loss of a batch
  drawn from the shuffled union of the sets, as in methods that train on e.g. retain ∪ relabelled forget.
  """
  total = float(sum(counts.values()))
  if total <= 0:
    raise ValueError(f'empty sets: {dict(counts)}')
  return {k: float(v) / total for k, v in counts.items()}


def with_teacher(params: PyTree, data: Any, rng: jax.Array, env: Any) -> tuple[PyTree, PyTree]:
  """`prepare` of distillation-based algorithms: start from the original model, which is also the teacher."""
  del data, rng, env
  return params, {TEACHER: params}


def fresh_params(problem: base.Problem, rng: jax.Array, env: Any) -> PyTree:
  """A fresh initialisation, created directly replicated on the mesh (every process computes the same)."""
  sharding = jax.sharding.NamedSharding(env.mesh, jax.sharding.PartitionSpec())
  abstract = jax.eval_shape(problem.init_fn, rng)
  return jax.jit(problem.init_fn, out_shardings=jax.tree.map(lambda _: sharding, abstract))(rng)
