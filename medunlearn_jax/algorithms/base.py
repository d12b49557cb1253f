"""What an unlearning (or training) algorithm is: a loss, an Optax transformation and a data plan.

The step engine (`medunlearn_jax.engine`) runs every algorithm through the same jitted, data-parallel step;
an algorithm knows nothing about devices, checkpoints or files. An algorithm is built from

* a `Problem`: the model's apply function, number of classes and task type;
* its hyper-parameters (an `ml_collections.ConfigDict`, documented defaults in each algorithm's module);

and is a plain value:

* `phases`: the data plan, a sequence of `Phase`s, each a loss over named batches (`'retain'`, `'forget'`,
  `'train'`...) run for a number of epochs of its first ("driver") stream;
* `tx`: an `optax.GradientTransformationExtraArgs`; the engine calls `tx.update(grads, opt_state, params,
  context=context)` so a transformation may read the context (e.g. a saliency mask). A phase may bring its
  own optimizer (`Phase.tx`), which starts from a fresh state;
* `prepare(params, data, rng, env) -> (params, context)`: optional set-up run once before training (e.g.
  a saliency mask or Fisher importances, re-initialised blocks). `env` (an `engine.Env`) gives the mesh,
  batch size and `env.reduce(fn, params, split)`, a data-parallel sum of `fn(params, batch)` over a split,
  so set-up computations never need a loop of their own;
* optional hooks around the data plan: `derive_sets` (sets of its own made from the data before the first
  step, e.g. RUM's memorization subsets), `select` (after the last step, choose the parameters to hand on,
  e.g. SCRUB+R's rewind to an epoch snapshot) and `finish` (reshape them, e.g. prune a widened head).

The engine passes every transformation the step's batches as `batch=` (with `context=`), so a
transformation may also depend on which examples a step saw (Amnesiac's record of forget-batch updates).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, ContextManager, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Batch = Mapping[str, jax.Array]  # 'image' uint8 (B,H,W,C), 'label', 'mask' float32 (B,), 'id'


@dataclasses.dataclass(frozen=True)
class Problem:
  """The model and task an algorithm works on.

  Attributes:
    apply_fn: `apply_fn(params, images_float, train) -> logits`.
    init_fn: `init_fn(rng) -> params`, a fresh initialisation (for retraining, random teachers, EU-k).
    num_classes: number of output units.
    multilabel: sigmoid/BCE task instead of softmax/CE.
    stock_layers: a context in which `apply_fn` traces with stock Flax layers (`models.stock_layers` for a
      model built with native kernels). The engine counts FLOPs on programs traced there, so costs do not
      depend on which kernels ran (XLA's cost analysis cannot see into custom calls).
    with_outputs: `with_outputs(n)` is the same model with `n` output units (only the head's shapes
      differ), for methods that widen the head (Boundary Expanding); None when the model cannot.
  """
  apply_fn: Callable[[PyTree, jax.Array, bool], jax.Array]
  init_fn: Callable[[jax.Array], PyTree]
  num_classes: int
  multilabel: bool = False
  stock_layers: Callable[[], ContextManager[Any]] = contextlib.nullcontext
  with_outputs: Callable[[int], 'Problem'] | None = None


def flax_problem(make_module: Callable[[int], Any], num_classes: int, image_shape: Sequence[int], *,
                 multilabel: bool = False,
                 stock_layers: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> Problem:
  """The `Problem` of a Flax module `make_module(num_outputs)` taking images of `image_shape` (H, W, C)."""
  module = make_module(num_classes)
  dummy = jnp.zeros((1, *image_shape), jnp.float32)

  def apply_fn(params, images, train):
    return module.apply({'params': params}, images, train=train)

  def init_fn(rng):
    return module.init(rng, dummy)['params']

  def with_outputs(n):
    return flax_problem(make_module, n, image_shape, multilabel=multilabel, stock_layers=stock_layers)

  return Problem(apply_fn=apply_fn, init_fn=init_fn, num_classes=num_classes, multilabel=multilabel,
                 stock_layers=stock_layers, with_outputs=with_outputs)


class LossFn(Protocol):
  """`loss(params, batches, context, rng) -> (scalar loss, metrics dict of scalars)`."""

  def __call__(self, params: PyTree, batches: Mapping[str, Batch], context: PyTree,
               rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    ...


@dataclasses.dataclass(frozen=True)
class Phase:
  """One segment of an algorithm's data plan.

  Attributes:
    loss: the loss minimised in this phase (ascent is expressed as a negative term).
    streams: names of the sets iterated, each yielding one batch per step; the first drives the epoch.
    epochs: passes over the driver stream (fractional allowed); `steps` overrides it when set.
    steps: an exact number of steps (e.g. SCRUB's max-steps), or None.
    name: shown in logs and checkpoints.
    tx: an optimizer of this phase's own, started with a fresh state when the phase begins (as code that
      builds a new optimizer per phase does, e.g. UNSIR's impair and repair); later phases without one
      continue it. None: continue the optimizer in force (the algorithm's `tx` from the first phase on).
  """
  loss: LossFn
  streams: tuple[str, ...]
  epochs: float = 1.0
  steps: int | None = None
  name: str = 'main'
  tx: optax.GradientTransformationExtraArgs | None = None


def no_prepare(params: PyTree, data: Any, rng: jax.Array, env: Any) -> tuple[PyTree, PyTree]:
  """Default set-up: start from the given parameters with an empty context."""
  del data, rng, env
  return params, {}


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A registered algorithm, ready to run: see the module docstring."""
  name: str
  phases: tuple[Phase, ...]
  tx: optax.GradientTransformationExtraArgs
  prepare: Callable[[PyTree, Any, jax.Array, Any], tuple[PyTree, PyTree]] = no_prepare
  from_scratch: bool = False  # True for `retrain`/`original`: ignore the original model's parameters.
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # Maps the trained parameters to the model's (e.g. prunes a widened head); traceable, applied per model.
  finish: Callable[[PyTree], PyTree] | None = None
  # Sets derived from the data and the starting parameters before the first step and added to the streams
  # (RUM's memorization subsets): `derive_sets(params, data, env) -> {name: Split}`. Deterministic, so a
  # resumed run derives the same sets.
  derive_sets: Callable[[PyTree, Mapping[str, Any], Any], Mapping[str, Any]] | None = None
  # After the last step: the parameters the stage hands on, chosen from the final parameters and optimizer
  # state with the data at hand (SCRUB+R's rewind): `select(params, opt_state, data, env) -> params`.
  select: Callable[[PyTree, PyTree, Mapping[str, Any], Any], PyTree] | None = None

  def optimizers(self) -> list[optax.GradientTransformationExtraArgs]:
    """The optimizer in force during each phase (a phase's own `tx`, else the one before it)."""
    current, out = self.tx, []
    for phase in self.phases:
      current = phase.tx if phase.tx is not None else current
      out.append(current)
    return out

  def finished(self, params: PyTree) -> PyTree:
    """The parameters the run hands on: `finish(params)`, or `params` when there is nothing to finish."""
    return params if self.finish is None else self.finish(params)


# ---------------------------------------------------------------------------------------------------------
# Loss building blocks shared by algorithms.

def normalize_images(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]; done on device so only uint8 crosses the host boundary."""
  return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over the real (mask = 1) rows of a padded batch; 0 for an all-padding batch."""
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def per_example_loss(logits: jax.Array, labels: jax.Array, multilabel: bool) -> jax.Array:
  """Cross-entropy per example (softmax for single-label, mean sigmoid BCE for multi-label)."""
  if multilabel:
    # Labels < 0 mark findings to ignore (CheXpert's U-Ignore policy); they contribute no loss.
    known = (labels >= 0).astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, jnp.maximum(labels, 0).astype(jnp.float32))
    return jnp.sum(bce * known, axis=-1) / jnp.maximum(jnp.sum(known, axis=-1), 1.0)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))


def correct(logits: jax.Array, labels: jax.Array, multilabel: bool) -> jax.Array:
  """Per-example correctness (multi-label: all labels right)."""
  if multilabel:
    return jnp.all(((logits > 0) == (labels > 0)) | (labels < 0), axis=-1).astype(jnp.float32)
  return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def forward(problem: Problem, params: PyTree, batch: Batch, train: bool = True) -> jax.Array:
  return problem.apply_fn(params, normalize_images(batch['image']), train)


def cross_entropy(problem: Problem, params: PyTree, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(masked mean cross-entropy, masked accuracy) of one batch."""
  logits = forward(problem, params, batch)
  loss = masked_mean(per_example_loss(logits, batch['label'], problem.multilabel), batch['mask'])
  acc = masked_mean(correct(logits, batch['label'], problem.multilabel), batch['mask'])
  return loss, acc


def make_optimizer(name: str, learning_rate: float | optax.Schedule, *, momentum: float = 0.9,
                   weight_decay: float = 0.0, grad_clip: float | None = None,
                   nesterov: bool = False) -> optax.GradientTransformation:
  """SGD(+momentum), Adam or AdamW, with optional global-norm clipping first.

  Weight decay follows torch, whose reference code the algorithms come from: for 'sgd' and 'adam' it is
  coupled L2, `weight_decay · θ` added to the gradient before momentum or Adam's moments (torch's
  `SGD`/`Adam(weight_decay=...)`); for 'adamw' it is decoupled, applied to the update after Adam's scaling.
  """
  parts = []
  if grad_clip:
    parts.append(optax.clip_by_global_norm(grad_clip))
  if name == 'sgd':
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))
  elif name == 'adam':
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.adam(learning_rate))
  elif name == 'adamw':
    parts.append(optax.adamw(learning_rate, weight_decay=weight_decay))
  else:
    from medunlearn_jax import errors  # pylint: disable=g-import-not-at-top
    raise errors.ConfigError(f'unknown optimizer {name!r}; choose sgd, adam or adamw')
  return optax.chain(*parts)


def schedule(base_lr: float, total_steps: int, kind: str = 'cosine',
             warmup_steps: int = 0) -> optax.Schedule:
  """Learning-rate schedule: constant or cosine decay, with optional linear warm-up."""
  total_steps = max(int(total_steps), 1)
  if kind == 'constant':
    main = optax.constant_schedule(base_lr)
  elif kind == 'cosine':
    main = optax.cosine_decay_schedule(base_lr, max(total_steps - warmup_steps, 1))
  else:
    from medunlearn_jax import errors  # pylint: disable=g-import-not-at-top
    raise errors.ConfigError(f'unknown schedule {kind!r}; choose constant or cosine')
  if warmup_steps:
    return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup_steps), main], [warmup_steps])
  return main
