r"""Prints the key points of a config's LR and momentum schedules and plots
them; loads no data.

  python -m superconv.schedules_main --config configs/default.py \
      --out schedule.png
  python -m superconv.schedules --config configs/default.py  # Same program.

Overrides as in training: `--config.schedule.max_lr=1.0`. `--out ''`
prints the table only. Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence
import sys

from absl import flags
import jax
import numpy as np

from superconv import cli, schedules
from superconv import config as config_lib

PROG = "superconv.schedules"


def format_table(rows: Sequence[tuple[str, int, float, float, float]]) -> str:
  """Fixed-width table of (point, step, epoch, lr, momentum) rows."""
  width = max([len("point")] + [len(r[0]) for r in rows])
  lines = [
    f"{'point':<{width}}  {'step':>8}  {'epoch':>9}  {'lr':>12}"
    f"  {'momentum':>8}"
  ]
  lines.append("-" * len(lines[0]))
  for label, step, epoch, lr, mom in rows:
    lines.append(
      f"{label:<{width}}  {step:>8d}  {epoch:>9.2f}  {lr:>#12.5g}  {mom:>8.4f}"
    )
  return "\n".join(lines)


def num_train_examples(config) -> tuple[int, str | None]:
  """Training-set size for the CLI, without loading data: (size, note)."""
  ds = config.dataset
  if ds == "synthetic":
    return int(config.synthetic_train_size), None
  cifar = ("tfds:cifar10", "tfds:cifar100", "cifar10", "cifar100")
  if ds in cifar or ds.startswith("cifar:"):
    return 50_000, f"{ds}: assuming the standard 50,000 training images."
  if ds.startswith("folder:"):
    return 50_000, (
      f"{ds}: assuming 50,000 training images (CIFAR); the"
      " trainer uses the folder's real count."
    )
  raise schedules.ScheduleError(
    f"dataset: unknown {ds!r}; valid: cifar10, cifar100, cifar:<path>,"
    " tfds:cifar10, tfds:cifar100, folder:<path>, synthetic"
  )


def run(config, *, out: str | None, title: str = "") -> str:
  """Builds the config's schedules; returns the key-point table (with a
  header) and, if `out` is set, saves the plot there. Loads no data."""
  n_train, note = num_train_examples(config)
  spe = config_lib.steps_per_epoch(n_train, config.batch_size)
  if spe < 1:
    raise schedules.ScheduleError(
      f"batch_size: {config.batch_size} exceeds the {n_train} training examples"
    )
  total = config_lib.total_steps(config, n_train)
  lr_fn, m_fn = schedules.create(
    config.schedule,
    momentum=config.momentum,
    steps_per_epoch=spe,
    total_steps=total,
  )
  steps = np.arange(total, dtype=np.int32)
  lrs = np.asarray(jax.jit(jax.vmap(lr_fn))(steps), dtype=np.float64)
  moms = np.asarray(jax.jit(jax.vmap(m_fn))(steps), dtype=np.float64)
  points = schedules.key_points(
    config.schedule, steps_per_epoch=spe, total_steps=total, lr_values=lrs
  )
  rows = [
    (label, step, step / spe, lrs[step], moms[step]) for label, step in points
  ]
  header = [
    f"schedule: {schedules.describe(config.schedule)}",
    f"run: {total} steps = {total / spe:.2f} epochs of {spe} steps"
    f" (floor({n_train} / batch {config.batch_size}))",
  ]
  if not schedules.cycles_momentum(config.schedule):
    header[-1] += f"; constant momentum {config.momentum:g}"
  if note:
    header.append(f"note: {note}")
  text = "\n".join(header + ["", format_table(rows)])
  if out:
    _plot(
      steps,
      lrs,
      moms,
      points,
      spe=spe,
      out=out,
      title=title or "schedule",
      subtitle=schedules.describe(config.schedule),
      batch_size=config.batch_size,
    )
  return text


def _plot(
  steps,
  lrs,
  moms,
  points,
  *,
  spe: int,
  out: str,
  title: str,
  subtitle: str,
  batch_size: int,
) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(10, 5.4), dpi=110)
  (lr_line,) = ax.plot(
    steps, lrs, color="tab:blue", lw=1.8, label="learning rate (left axis)"
  )
  ax.set_xlabel(f"step (batch {batch_size}, {spe} steps per epoch)")
  ax.set_ylabel("learning rate", color="tab:blue")
  ax.tick_params(axis="y", labelcolor="tab:blue")
  ax.set_xlim(0, max(int(steps[-1]), 1))
  ax.set_ylim(0, float(lrs.max()) * 1.15)
  ax.grid(alpha=0.3)
  ax2 = ax.twinx()
  lo, hi = float(moms.min()), float(moms.max())
  m_label = (
    "momentum (right axis)"
    if hi > lo
    else f"momentum (right axis, constant {lo:g})"
  )
  (m_line,) = ax2.plot(
    steps, moms, color="tab:orange", lw=1.6, ls="--", label=m_label
  )
  ax2.set_ylabel("momentum", color="tab:orange")
  ax2.tick_params(axis="y", labelcolor="tab:orange")
  pad = max(0.02, 0.1 * (hi - lo))
  ax2.set_ylim(lo - pad, hi + pad)
  for _, step in points:
    ax.axvline(step, color="gray", lw=0.6, ls=":", zorder=0)
    ax.plot([step], [lrs[step]], "o", color="tab:blue", ms=4)
  peak = [s for l, s in points if "peak" in l]
  if peak:
    p = peak[0]
    ax.annotate(
      f"peak {lrs[p]:.4g} at step {p}",
      (p, lrs[p]),
      textcoords="offset points",
      xytext=(0, 7),
      ha="center",
      fontsize=9,
      color="tab:blue",
    )
  top = ax.secondary_xaxis(
    "top", functions=(lambda s: s / spe, lambda e: e * spe)
  )
  top.set_xlabel("epoch")
  ax.legend(
    handles=[lr_line, m_line],
    loc="upper center",
    ncol=2,
    fontsize=9,
    frameon=False,
    bbox_to_anchor=(0.5, -0.13),
  )
  fig.suptitle(title, fontsize=12, y=0.995)
  ax.set_title(subtitle, fontsize=9, pad=28)
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)


def _define_flags(fv) -> None:
  flags.DEFINE_string(
    "out",
    "schedule.png",
    "PNG to write the plot to ('' = no plot).",
    flag_values=fv,
  )
  flags.mark_flags_as_required(["config"], flag_values=fv)


def main(argv: Sequence[str]) -> int:
  """Command line (argv without the program); returns the exit status."""
  fv, _ = cli.parse_command(
    argv,
    _define_flags,
    prog=PROG,
    doc=__doc__,
    config_help="Experiment config file (configs/<name>.py[:arg]);"
    " --config.KEY=VALUE overrides after it.",
  )
  try:
    text = run(
      fv.config,
      out=fv.out,
      title=f"{fv['config'].config_filename}: learning rate"
      " and momentum schedule",
    )
  except (schedules.ScheduleError, config_lib.ConfigError, ValueError) as e:
    return cli.error(e, prog=PROG)
  print(text)
  if fv.out:
    print(f"\nwrote {fv.out}")
  return cli.EXIT_OK


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
