"""Orbax checkpoints of the train state under workdir/checkpoints.

A checkpoint `checkpoints/<step>/` holds what an exact resume needs:

  state   parameters, BatchNorm statistics, the optimizer state (momentum
          traces and the step counts that drive the schedules) and the step;
  config  the resolved config of the run (JSON);
  meta    facts derived from config + data set: total_steps,
          steps_per_epoch, num_classes, image_shape, the normalization
          mean/std, the device count (JSON);
  checksums  the crc32 of every leaf of `state` as saved (JSON).

No RNG state or data-loader position is saved because none exists: data
order and augmentation are pure functions of (seed, step) (see
input_pipeline.py), and initialization only happens at step 0.

Reliability rules enforced here:

- A checkpoint is complete when its step directory carries Orbax's commit
  marker (`commit_success.txt`, written just before the atomic rename) and
  its items. Leftover `*.orbax-checkpoint-tmp*` directories (a save killed
  half-way), step directories without the marker, and checkpoints that fail
  to restore are never restored: `restore_latest` falls back to the previous
  complete one and logs why, and `set_aside` moves them to
  `workdir/checkpoints_incomplete/` so that Orbax never sees them.
- `save` refuses a state with a NaN or Inf anywhere.
- Restoring verifies what it read (`verify`): every leaf finite and equal to
  its saved crc32. A checkpoint that fails is treated like an incomplete
  one (skipped, with one warning naming the reason, and set aside). A
  checkpoint saved before checksums existed is restored after the finite
  check, with a warning that its data could not be verified.
- Resuming with a config that changes the training trajectory is refused:
  only the fields in `RESUME_SAFE_KEYS` may differ (see `config_changes`).

Only saving, restoring and verifying live here; `superconv.load_checkpoint`
(api.py) builds the model beside the restored variables for notebooks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import traceback
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from superconv import config as config_lib
from superconv import storage

log = logging.getLogger("superconv")

CHECKPOINT_DIR = "checkpoints"
INCOMPLETE_DIR = "checkpoints_incomplete"
COMMIT_MARKER = "commit_success.txt"  # Orbax's commit file (atomicity.py).
_TMP_MARKER = ".orbax-checkpoint-tmp"
_ITEMS = ("state", "config")  # Required items; the others are optional.
_CHECKSUMS = "checksums"

# Config fields that may change between the run that wrote a checkpoint and
# the run that resumes from it: they change what is logged, evaluated, kept
# or where data is read from, never the training trajectory. Every other
# field (and every field added later) changes the trajectory unless added
# here. num_steps/num_epochs are compared through the resolved total steps.
RESUME_SAFE_KEYS = frozenset(
  {
    "log_every_steps",
    "eval_every_epochs",
    "eval_batch_size",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "cache_dir",
    "data_dir",
    "tfds_download",
    "nonfinite_policy",
    # The convolution's and BatchNorm's implementations: the same
    # function, only the float summation order of gradients differs.
    "conv_impl",
    "bn_impl",
  }
)
_DURATION_KEYS = frozenset({"num_steps", "num_epochs"})


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used (the message names the path)."""


class NonFiniteStateError(CheckpointError):
  """A state with NaN/Inf values was about to be saved."""


# Step directories that `restore_latest` has tried to read: a failure is
# reported by the exception it catches (a warning naming the checkpoint).
_READ_ATTEMPTS: set[str] = set()


def _is_late_callback_into_closed_loop(unraisable) -> bool:
  """RuntimeError('Event loop is closed') from a call_soon_threadsafe that
  native code (no Python caller) made on a closed asyncio loop."""
  frames = traceback.extract_tb(unraisable.exc_traceback)
  return (
    isinstance(unraisable.exc_value, RuntimeError)
    and str(unraisable.exc_value) == "Event loop is closed"
    and bool(frames)
    and frames[0].name == "call_soon_threadsafe"
  )


class _SecondaryRestoreErrors(logging.Filter):
  """Drops asyncio's "Future exception was never retrieved" records of
  the other arrays of a checkpoint whose restore failed (already reported
  through the exception `restore_latest` caught); keeps all others."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not record.getMessage().startswith("Future exception was never"):
      return True
    text = str(record.exc_info[1]) if record.exc_info else record.getMessage()
    if any(f"{path}/" in text for path in _READ_ATTEMPTS):
      log.debug("Dropped: %s", record.getMessage())
      return False
    return True


def _quiet_secondary_errors() -> None:
  """Silences the stray tracebacks of a failed restore or save.

  When one array of a restore or save fails, Orbax's `run_sync` raises
  that error and closes its event loop while TensorStore still completes
  the other arrays in its own threads. Each late completion calls
  `loop.call_soon_threadsafe` on the closed loop (Python prints the
  RuntimeError "Event loop is closed" as an unraisable exception), and
  completions that failed before the loop closed are reported by asyncio
  as "Future exception was never retrieved": tracebacks per array, after
  the real error. Exactly those go to debug level (the latter only for a
  checkpoint being restored); every other unraisable exception reaches
  the previous `sys.unraisablehook`, every other record its handlers.
  Installed once.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_superconv_quiet", False):
    return

  def hook(unraisable):
    if _is_late_callback_into_closed_loop(unraisable):
      log.debug("Dropped a late TensorStore callback into a closed loop.")
      return
    previous(unraisable)

  hook._superconv_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_SecondaryRestoreErrors())


def checkpoint_dir(workdir: str) -> str:
  return storage.join(storage.absolute(workdir), CHECKPOINT_DIR)


# ----------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------


def manager(
  workdir: str, *, keep: int, async_save: bool = True
) -> ocp.CheckpointManager:
  """The run's CheckpointManager (keeps the `keep` most recent steps).

  The final checkpoint of a run is its most recent one, so it is always
  kept. Call `set_aside` first so that no incomplete checkpoint is in the
  directory the manager scans.
  """
  _quiet_secondary_errors()
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, enable_async_checkpointing=async_save
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def nonfinite_leaves(tree, name=jax.tree_util.keystr) -> list[str]:
  """Paths (`name(path)`) of the floating-point leaves of `tree` that hold a
  NaN or Inf."""
  bad = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
      bad.append(name(path))
  return bad


def leaf_name(path) -> str:
  """'params/head/bias': a leaf's path, the same for a train state and for
  the plain dicts restored without a target."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def checksums(tree) -> dict[str, int]:
  """The crc32 of every leaf's bytes, by `leaf_name` (a host tree)."""
  return {
    leaf_name(path): zlib.crc32(np.ascontiguousarray(leaf).tobytes())
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _names(names: list[str]) -> str:
  return f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"


def verify(state, saved_checksums: dict | None) -> str | None:
  """Why a restored state must not be used, or None if it may.

  Every floating-point leaf must be finite, and with `saved_checksums` (the
  checkpoint's "checksums" item; None for checkpoints saved without one)
  every leaf must have the crc32 recorded when it was saved.
  """
  reasons = []
  bad = nonfinite_leaves(state, name=leaf_name)
  if bad:
    reasons.append(f"non-finite values in {_names(bad)}")
  if saved_checksums is not None:
    saved = saved_checksums.get("crc32", {})
    actual = checksums(state)
    differ = [
      name
      for name in sorted(saved.keys() | actual.keys())
      if saved.get(name) != actual.get(name)
    ]
    if differ:
      reasons.append(
        f"checksum mismatch in {_names(differ)}: its data changed after it"
        " was saved"
      )
  return "; ".join(reasons) or None


def save(
  mngr: ocp.CheckpointManager,
  step: int,
  state,
  config_dict: dict,
  meta: dict | None = None,
  *,
  force: bool = False,
) -> bool:
  """Saves a host copy of `state` (a single, unreplicated train state).

  The save is asynchronous; `mngr.wait_until_finished()` completes it.
  Raises NonFiniteStateError, saving nothing, if any value is NaN or Inf.
  """
  host_state = jax.device_get(state)
  bad = nonfinite_leaves(host_state)
  if bad:
    raise NonFiniteStateError(
      f"refusing to save checkpoint {step}: non-finite values in"
      f" {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
    )
  items = {
    "state": ocp.args.StandardSave(host_state),
    "config": ocp.args.JsonSave(config_dict),
    _CHECKSUMS: ocp.args.JsonSave({"crc32": checksums(host_state)}),
  }
  if meta is not None:
    items["meta"] = ocp.args.JsonSave(meta)
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


# ----------------------------------------------------------------------------
# Finding and restoring complete checkpoints
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Incomplete:
  """A checkpoint directory that must never be restored, and why."""

  path: str
  reason: str


@dataclasses.dataclass
class Restored:
  """A restored checkpoint."""

  step: int
  state: object  # Host (numpy) train state, or a dict without a target.
  config: dict
  meta: dict


def scan(workdir: str) -> tuple[list[int], list[Incomplete]]:
  """(complete steps in increasing order, incomplete checkpoint dirs).

  Reads only directory listings: nothing is restored or written.
  """
  root = checkpoint_dir(workdir)
  if not storage.isdir(root):
    return [], []
  complete, incomplete = [], []
  for name in storage.listdir(root):
    path = storage.join(root, name)
    if _TMP_MARKER in name:
      incomplete.append(
        Incomplete(path, "a save that never finished (temporary directory)")
      )
      continue
    if not re.fullmatch(r"\d+", name):
      continue  # Not ours (e.g. a README); Orbax ignores it too.
    if not storage.isdir(path):
      incomplete.append(Incomplete(path, "not a directory"))
      continue
    missing = [
      f
      for f in (COMMIT_MARKER,) + _ITEMS
      if not storage.exists(storage.join(path, f))
    ]
    if missing:
      incomplete.append(Incomplete(path, f"missing {', '.join(missing)}"))
      continue
    complete.append(int(name))
  return sorted(complete), incomplete


def _read_json_items(path: str) -> tuple[dict, dict, dict | None]:
  """(config, meta, checksums or None) of one step directory; raises if
  unreadable."""
  items = {"config": ocp.args.JsonRestore()}
  optional = [
    name
    for name in ("meta", _CHECKSUMS)
    if storage.isdir(storage.join(path, name))
  ]
  for name in optional:
    items[name] = ocp.args.JsonRestore()
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    restored = ckptr.restore(path, args=ocp.args.Composite(**items))
  return (
    dict(restored["config"]),
    dict(restored["meta"]) if "meta" in optional else {},
    dict(restored[_CHECKSUMS]) if _CHECKSUMS in optional else None,
  )


def _restore_state(path: str, target):
  """The train state of one step directory; raises if unreadable."""
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    restored = ckptr.restore(
      path, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
  return restored["state"]


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def restore_latest(
  workdir: str, target=None, step: int | None = None, check=None
) -> tuple[Restored | None, list[Incomplete]]:
  """(latest complete checkpoint or None, incomplete checkpoints skipped).

  Args:
    workdir: the run's directory.
    target: a train state (concrete or abstract, e.g. from jax.eval_shape)
      giving the structure to restore into; None restores plain dicts.
    step: a specific step (must be complete), or None for the latest.
    check: optional check(config, meta, step) called with a checkpoint's
      config before its state is restored; what it raises propagates (e.g.
      a config that may not resume from it).

  Incomplete, unreadable and corrupt checkpoints (see `verify`) are
  skipped (never restored), with a log line naming each, why, and the step
  used instead; pass the list to `set_aside`. With `step`, such a
  checkpoint raises CheckpointError naming why. Values come back as host
  numpy arrays, whatever the device count that wrote them. Nothing is
  written.
  """
  _quiet_secondary_errors()
  steps, skipped = scan(workdir)
  if step is not None:
    bad = [s for s in skipped if storage.basename(s.path) == str(step)]
    if step not in steps:
      why = f" ({bad[0].reason})" if bad else ""
      raise CheckpointError(
        f"--step: no complete checkpoint {step} in {checkpoint_dir(workdir)}"
        f"{why}; complete steps: {', '.join(map(str, steps)) or 'none'}"
      )
    steps = [step]
  restored = None
  for s in reversed(steps):
    path = storage.join(checkpoint_dir(workdir), str(s))
    _READ_ATTEMPTS.add(path)
    failure = None
    try:
      config, meta, saved_checksums = _read_json_items(path)
    except Exception as e:  # pylint: disable=broad-except
      failure = e
    else:
      if check is not None:
        check(config, meta, s)
      try:
        state = _restore_state(path, target)
      except Exception as e:  # pylint: disable=broad-except
        failure = e
    if failure is not None:
      reason = f"unreadable ({_first_line(failure)})"
    else:
      reason = verify(state, saved_checksums)
      if reason is None:
        if saved_checksums is None:
          log.warning(
            "Checkpoint %s has no checksums (saved by an older version):"
            " its values are finite, but whether its data changed since it"
            " was saved cannot be checked.",
            path,
          )
        restored = Restored(s, state, config, meta)
        break
    if step is not None:
      raise CheckpointError(
        f"{path}: unusable checkpoint, {reason}"
      ) from failure
    skipped.append(Incomplete(path, reason))
  for s in skipped:
    log.warning(
      "Incomplete checkpoint %s (%s): never restored; %s.",
      s.path,
      s.reason,
      f"using step {restored.step}, the latest complete one"
      if restored
      else "no complete checkpoint to use",
    )
  return restored, skipped


def set_aside(workdir: str, incomplete: list[Incomplete]) -> None:
  """Moves incomplete checkpoints to workdir/checkpoints_incomplete/.

  Orbax would otherwise count them as steps (for `latest_step` and
  retention) or collide with them when saving the same step again.
  Only process 0 moves files: with several processes, the caller holds the
  others at a barrier until it is done (train.py does).
  """
  if not incomplete or jax.process_index() != 0:
    return
  aside = storage.join(storage.absolute(workdir), INCOMPLETE_DIR)
  storage.makedirs(aside)
  for item in incomplete:
    if not storage.exists(item.path):
      continue
    name = storage.basename(item.path)
    dest = storage.join(aside, name)
    k = 1
    while storage.exists(dest):
      dest = storage.join(aside, f"{name}.{k}")
      k += 1
    storage.move(item.path, dest)
    log.warning(
      "Moved incomplete checkpoint %s to %s (delete it when not needed).",
      item.path,
      dest,
    )


# ----------------------------------------------------------------------------
# Resuming with a changed config
# ----------------------------------------------------------------------------


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_changes(
  saved: dict,
  current: dict,
  *,
  saved_total_steps: int | None = None,
  current_total_steps: int | None = None,
  defaults: dict | None = None,
) -> list[str]:
  """Trajectory-changing differences between two config dicts.

  Returns "key (old -> new)" strings, sorted by key; empty when resuming
  is safe. Keys in RESUME_SAFE_KEYS are ignored; num_steps and num_epochs
  are compared through the resolved total steps when both are given
  (otherwise directly). A key present on one side only is a difference,
  except a key absent from the saved config (a field added after the
  checkpoint was written) whose current value is its default in `defaults`
  (a config dict as JSON reads it; None = `superconv.config.base_config()`):
  new fields default to the behaviour from before they existed.
  """
  if defaults is None:
    defaults = json.loads(config_lib.base_config().to_json_best_effort())
  old, new = _flatten(saved), _flatten(current)
  default = _flatten(defaults)
  compare_totals = (
    saved_total_steps is not None and current_total_steps is not None
  )
  changes = []
  for key in sorted(old.keys() | new.keys()):
    if key in RESUME_SAFE_KEYS or (compare_totals and key in _DURATION_KEYS):
      continue
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if key not in old and key in default and b == default[key]:
      continue
    if a != b:
      changes.append(f"{key} ({a!r} -> {b!r})")
  if compare_totals and saved_total_steps != current_total_steps:
    changes.append(
      f"num_steps/num_epochs (total steps {saved_total_steps}"
      f" -> {current_total_steps})"
    )
  return changes


# ----------------------------------------------------------------------------
# Reuse from Python
# ----------------------------------------------------------------------------


def restore(workdir: str, step: int | None = None, target=None) -> Restored:
  """Like `restore_latest`, but raises CheckpointError when none is complete."""
  restored, _ = restore_latest(workdir, target, step=step)
  if restored is None:
    raise CheckpointError(
      f"--workdir: no complete checkpoint in {checkpoint_dir(workdir)}"
    )
  return restored
