"""Orbax checkpoints of the train state under workdir/checkpoints.

A checkpoint holds what an exact resume needs: parameters, BatchNorm
statistics, the optimizer state (whose step counts drive the schedules) and
the step. Data order and augmentation are functions of (seed, step), so no
RNG state or data-loader position is needed. The resolved config is saved
beside the state so a checkpoint can be evaluated or reused on its own.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("superconv")

CHECKPOINT_DIR = "checkpoints"


def manager(workdir: str, *, keep: int,
            async_save: bool = True) -> ocp.CheckpointManager:
  """The run's CheckpointManager (keeps the `keep` most recent steps)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, config_dict: dict,
         *, force: bool = False) -> bool:
  """Saves a host copy of `state` (a single, unreplicated train state)."""
  host_state = jax.device_get(state)
  return mngr.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(host_state),
          config=ocp.args.JsonSave(config_dict)),
      force=force)


def restore(mngr: ocp.CheckpointManager, target, step: int | None = None):
  """Restores (state, config_dict) at `step` (default: latest) or None."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = mngr.restore(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          config=ocp.args.JsonRestore()))
  return restored["state"], dict(restored["config"])
