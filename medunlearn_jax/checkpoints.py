"""The only module that talks to Orbax: one `CheckpointManager` per stage (original, retrain, each algorithm).

A checkpoint holds the train state (step, params, optimizer state, context) and a JSON metadata record
(steps done, accumulated cost, hyper-parameters, whether the stage finished). Runs resume from the latest
checkpoint by default. Orbax writes on process 0 only in multi-host runs and commits each step atomically
(a temporary directory renamed when complete), so a killed run never leaves a half-written checkpoint that
looks valid.
"""
from __future__ import annotations

import logging as std_logging
import os
import pathlib
from typing import Any, Mapping

from absl import logging
import jax
import orbax.checkpoint as ocp

PyTree = Any


class _OrbaxInfoFilter(std_logging.Filter):
  """Drops Orbax's INFO records (it logs every file operation through absl's logger, from the main thread and
  from its own), so that the run's progress stays readable; its warnings and errors pass."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


logging.get_absl_logger().addFilter(_OrbaxInfoFilter())


class StageCheckpoints:
  """Save/restore of one stage's train state plus metadata.

  Args:
    directory: the stage's checkpoint folder (e.g. `<workdir>/checkpoints/finetune`).
    max_to_keep: how many recent steps to keep.
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        # A save killed midway leaves `<step>.orbax-checkpoint-tmp-*`: Orbax removes it (in the background,
        # done before the next save; on the primary host only).
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False, cleanup_tmp_directories=True),
        # Handlers named up front, so that a fresh manager can read a saved tree's metadata.
        item_handlers={'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, meta: Mapping[str, Any]) -> None:
    """Saves `state` and `meta` at `step` (an existing step is never overwritten)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(dict(meta))))
    self._manager.wait_until_finished()

  def read_meta(self, step: int | None = None) -> dict[str, Any] | None:
    """Metadata of `step` (default: latest) without loading the arrays; None if there is no checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored['meta'])

  def restore(self, abstract_state: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
    """Restores the state into the shardings given by `abstract_state` (ShapeDtypeStructs with sharding)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], dict(restored['meta'])

  def restore_params(self, sharding: jax.sharding.Sharding, step: int | None = None
                     ) -> tuple[PyTree, dict[str, Any]]:
    """The `params` of a saved state and its metadata, without a template of the whole state.

    The saved tree's own metadata gives the shapes, so a finished stage can be loaded without rebuilding
    its optimizer and context (e.g. without re-running SSD's Fisher pass); every array is placed with
    `sharding` (replicated in this codebase).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    tree = self._manager.item_metadata(step)['state'].tree
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored['state']['params'], dict(restored['meta'])

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: PyTree) -> PyTree:
  """ShapeDtypeStructs (with the arrays' shardings) describing `tree`, for `restore`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
