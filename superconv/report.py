r"""Report over runs: accuracy with error bars, time to target, speed-ups.

  python -m superconv.report runs/onecycle runs/tuned_cosine --out report/ \
      [--targets 0.90,0.91,0.92] [--baseline NAME] [--label DIR=NAME ...]

Each DIR is a run directory (config.json + metrics.jsonl) or any directory
above run directories (a sweep); they are found recursively. Runs are
grouped into configurations by their config.json minus `seed` and the keys
that cannot change a result (paths, logging and checkpoint cadence:
IGNORED_KEYS). Only complete runs (an evaluation at the run's last step)
enter the statistics; incomplete ones are listed.

Writes to --out: report.md; the same tables as CSV (configurations.csv,
accuracy.csv, targets.csv, comparison.csv, speedup.csv, runs.csv); plots
accuracy_vs_steps.png, accuracy_vs_epochs.png, train_loss.png,
lr_schedule.png (lines: the mean over seeds; bands: min to max over seeds;
accuracy in %), and with --wallclock_plot accuracy_vs_wallclock.png. The
output depends only on the runs and the
arguments (no timestamps), so a report can be diffed.

Statistics (superconv.stats): mean, sample std (ddof 1), 95% t-interval of
the mean; time to a target = the first evaluation with eval_accuracy >=
target (resolution: the evaluation interval); speed-up over the baseline =
ratio of mean times (baseline / configuration, > 1 = faster) with a
delta-method interval on the log ratio (Welch-Satterthwaite df), computed
only when every seed of both configurations reached the target; the final
accuracy difference gets a two-sided Welch t-test.
"""

from __future__ import annotations

from collections.abc import Sequence
import csv
import dataclasses
import json
import math
import os
import sys

from absl import flags

from superconv import budget as budget_lib
from superconv import cli, metric_writer, stats
from superconv import config as config_lib

DEFAULT_TARGETS = (0.90, 0.91, 0.92)
CONFIDENCE = 0.95
# Reached within float32 rounding of eval_accuracy (granularity 1e-4 on CIFAR).
TARGET_TOLERANCE = 1e-6
# Keys that never change what a run computes: not part of a configuration.
# superconv.checkpoint.RESUME_SAFE_KEYS less eval_every_epochs (it sets the
# time-to-target resolution) and nonfinite_policy ("skip" changes the
# trajectory when a step is skipped), plus the seed.
IGNORED_KEYS = (
  "seed",
  "data_dir",
  "cache_dir",
  "tfds_download",
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval_batch_size",
)
# Keys shown first in derived labels, in this order.
LABEL_PRIORITY = (
  "model",
  "schedule.name",
  "batch_size",
  "num_steps",
  "num_epochs",
  "schedule.max_lr",
  "schedule.warmup",
  "validation_size",
  "dataset",
)
_BARE_LABEL_KEYS = ("model", "schedule.name")
_SKIP_DIRS = ("checkpoints", "tensorboard")
PLOTS = (
  "accuracy_vs_steps.png",
  "accuracy_vs_epochs.png",
  "train_loss.png",
  "lr_schedule.png",
)
# Drawn only on request (--wallclock_plot): runs that shared a machine, or
# ran on different ones, have wall-clock times that do not compare.
WALLCLOCK_PLOT = "accuracy_vs_wallclock.png"
BAND_LABEL = "shaded: min to max over seeds"


class ReportError(ValueError):
  """Bad report input; a one-line message naming the argument or path."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


# ============================================================================
# Reading runs
# ============================================================================


def _float(value) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def flatten(tree: dict, prefix: str = "") -> dict:
  """{'schedule': {'max_lr': 3}} -> {'schedule.max_lr': 3}."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


@dataclasses.dataclass
class RunData:
  """One run directory, parsed."""

  path: str  # As found under a DIR argument.
  config: dict  # Flattened config.json.
  seed: int | None
  train_rows: list  # Sorted by step, one per step.
  eval_rows: list
  total_steps: int | None
  complete: bool

  @property
  def final(self) -> dict | None:
    return self.eval_rows[-1] if self.complete else None

  @property
  def final_accuracy(self) -> float:
    return _float(self.final["eval_accuracy"]) if self.final else math.nan

  @property
  def peak_accuracy(self) -> float:
    values = [_float(r["eval_accuracy"]) for r in self.eval_rows]
    return max(values) if values else math.nan

  @property
  def wall_seconds(self) -> float:
    return _float(self.final.get("wall_time")) if self.final else math.nan


def _one_per_step(rows: list) -> list:
  by_step = {}
  for row in rows:
    by_step[int(row["step"])] = row  # A resumed run's later row wins.
  return [by_step[s] for s in sorted(by_step)]


def _total_steps(config: dict, rows: list) -> int | None:
  """config num_steps, else round(num_epochs * steps per epoch).

  Steps per epoch come from any logged row (epoch = step / steps_per_epoch);
  the epochs become steps through superconv.config.steps().
  """
  num_steps = int(_float(config.get("num_steps", 0)) or 0)
  if num_steps > 0:
    return num_steps
  for row in rows:
    epoch, step = _float(row.get("epoch")), _float(row.get("step"))
    if epoch > 0 and step > 0:
      spe = int(round(step / epoch))
      epochs = _float(config.get("num_epochs", 0))
      return config_lib.steps(epochs, "epochs", steps_per_epoch=spe)
  return None


def load_run(path: str) -> RunData:
  """Parses path/config.json and path/metrics.jsonl."""
  try:
    with open(os.path.join(path, "config.json")) as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ReportError(f"{path}/config.json: cannot read it: {e}") from None
  rows = metric_writer.read_jsonl(os.path.join(path, "metrics.jsonl"))
  rows = [r for r in rows if isinstance(r, dict) and "step" in r]
  train = _one_per_step([r for r in rows if "train_loss" in r])
  evals = _one_per_step([r for r in rows if "eval_accuracy" in r])
  flat = flatten(config)
  total = _total_steps(flat, rows)
  complete = (
    bool(evals) and total is not None and int(evals[-1]["step"]) == total
  )
  seed = flat.get("seed")
  return RunData(
    path=path,
    config=flat,
    seed=int(seed) if isinstance(seed, (int, float)) else None,
    train_rows=train,
    eval_rows=evals,
    total_steps=total,
    complete=complete,
  )


def find_runs(paths: Sequence[str]) -> list[str]:
  """Run directories at or below each path, in argument order, then sorted."""
  found = []
  for path in paths:
    if not os.path.isdir(path):
      raise ReportError(f"{path}: no such directory")
    here = []
    for root, dirs, files in os.walk(path):
      dirs[:] = sorted(
        d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")
      )
      if "config.json" in files and "metrics.jsonl" in files:
        here.append(os.path.normpath(root))
        dirs[:] = []
    found.extend(p for p in sorted(here) if p not in found)
  if not found:
    raise ReportError(
      f"{', '.join(paths)}: no run directories (config.json +"
      " metrics.jsonl) found"
    )
  return found


# ============================================================================
# Configurations and labels
# ============================================================================


@dataclasses.dataclass
class Configuration:
  """Runs that differ only in the seed (and IGNORED_KEYS)."""

  label: str
  settings: dict  # Flattened config without IGNORED_KEYS.
  runs: list  # Complete runs, in discovery order.
  incomplete: list
  differing: dict = dataclasses.field(default_factory=dict)

  @property
  def eval_set(self) -> str:
    size = int(_float(self.settings.get("validation_size", 0)) or 0)
    return f"validation ({size})" if size > 0 else "test"


def _settings(run: RunData) -> dict:
  return {k: v for k, v in run.config.items() if k not in IGNORED_KEYS}


def _value_text(value) -> str:
  if isinstance(value, str):
    return value
  return json.dumps(value)


def _auto_labels(settings: list[dict]) -> tuple[list[str], list[dict]]:
  """Short unique labels from the keys whose values differ, and those keys.

  Differing keys join the label in LABEL_PRIORITY order (then
  alphabetically) until every label is unique; model and schedule name show
  as bare values, others as short_key=value.
  """
  keys = sorted(set().union(*settings))
  differing = [
    k for k in keys if len({_value_text(s.get(k)) for s in settings}) > 1
  ]
  ordered = [k for k in LABEL_PRIORITY if k in differing]
  ordered += [k for k in differing if k not in LABEL_PRIORITY]

  def render(keys_):
    shorts = [k.rsplit(".", 1)[-1] for k in keys_]
    labels = []
    for s in settings:
      parts = []
      for k, short in zip(keys_, shorts):
        value = _value_text(s.get(k))
        if k in _BARE_LABEL_KEYS:
          parts.append(value)
        else:
          parts.append(f"{k if shorts.count(short) > 1 else short}={value}")
      labels.append(" ".join(parts))
    return labels

  # Greedy: differing keys in priority order until the labels are unique.
  chosen = []
  for key in ordered:
    chosen.append(key)
    if len(set(render(chosen))) == len(settings):
      break
  labels = render(chosen)
  if not differing:
    labels = [
      " ".join(_value_text(s[k]) for k in _BARE_LABEL_KEYS if k in s) or "run"
      for s in settings
    ]
  details = [{k: s.get(k) for k in differing} for s in settings]
  return labels, details


def _override_for(path: str, overrides: dict) -> str | None:
  """The --label name of the longest DIR that contains path."""
  full = os.path.abspath(path)
  best, best_len = None, -1
  for directory, name in overrides.items():
    d = os.path.abspath(directory)
    if (full == d or full.startswith(d + os.sep)) and len(d) > best_len:
      best, best_len = name, len(d)
  return best


def group(
  runs: Sequence[RunData], label_overrides: dict | None = None
) -> list[Configuration]:
  """Configurations in order of first appearance, each with a unique label."""
  groups: dict[str, Configuration] = {}
  for run in runs:
    key = json.dumps(_settings(run), sort_keys=True)
    if key not in groups:
      groups[key] = Configuration("", _settings(run), [], [])
    (groups[key].runs if run.complete else groups[key].incomplete).append(run)
  configs = list(groups.values())
  auto, details = _auto_labels([c.settings for c in configs])
  names = []
  for c, a, d in zip(configs, auto, details):
    c.differing = d
    given = {
      _override_for(r.path, label_overrides or {})
      for r in c.runs + c.incomplete
    }
    names.append(given.pop() if len(given) == 1 and None not in given else a)
  for c, name, a in zip(configs, names, auto):
    c.label = name if names.count(name) == 1 or name == a else f"{name} ({a})"
  return configs


# ============================================================================
# Statistics
# ============================================================================


def time_to_target(run: RunData, target: float) -> dict | None:
  """step, epoch, examples and wall seconds of the first eval >= target."""
  for row in run.eval_rows:
    if _float(row["eval_accuracy"]) >= target - TARGET_TOLERANCE:
      return {
        "steps": _float(row["step"]),
        "epochs": _float(row.get("epoch")),
        "examples": _float(row.get("examples_seen")),
        "wall_seconds": _float(row.get("wall_time")),
      }
  return None


TIME_MEASURES = ("steps", "epochs", "examples", "wall_seconds")


@dataclasses.dataclass
class Report:
  """Everything report.md and the CSVs show."""

  configs: list
  targets: tuple
  baseline: Configuration | None
  tables: dict  # name -> list of row dicts (CSV columns in order).
  wallclock_plot: bool = False  # Also plot accuracy against wall-clock.


def plot_names(report: Report) -> tuple:
  """The PNGs that `write` draws for `report`."""
  return PLOTS + ((WALLCLOCK_PLOT,) if report.wallclock_plot else ())


def _accuracy_row(c: Configuration) -> dict:
  s = stats.summarize([r.final_accuracy for r in c.runs], CONFIDENCE)
  peak = stats.mean([r.peak_accuracy for r in c.runs])
  wall = stats.summarize([r.wall_seconds for r in c.runs], CONFIDENCE)
  return {
    "configuration": c.label,
    "eval_set": c.eval_set,
    "seeds": s.n,
    "incomplete_runs": len(c.incomplete),
    "final_accuracy_mean": s.mean,
    "final_accuracy_std": s.std,
    "ci95_low": s.ci_low,
    "ci95_high": s.ci_high,
    "final_accuracy_min": s.min,
    "final_accuracy_max": s.max,
    "peak_accuracy_mean": peak,
    "wall_seconds_mean": wall.mean,
    "wall_seconds_std": wall.std,
  }


def _target_row(c: Configuration, target: float) -> dict:
  times = [time_to_target(r, target) for r in c.runs]
  reached = [t for t in times if t is not None]
  row = {
    "configuration": c.label,
    "target": target,
    "seeds_reached": len(reached),
    "seeds": len(c.runs),
  }
  for measure in TIME_MEASURES:
    s = stats.summarize([t[measure] for t in reached], CONFIDENCE)
    row.update(
      {
        f"{measure}_mean": s.mean,
        f"{measure}_std": s.std,
        f"{measure}_min": s.min,
        f"{measure}_max": s.max,
      }
    )
  return row


def _comparison_row(c: Configuration, base: Configuration) -> dict:
  w = stats.welch(
    [r.final_accuracy for r in c.runs],
    [r.final_accuracy for r in base.runs],
    CONFIDENCE,
  )
  return {
    "configuration": c.label,
    "baseline": base.label,
    "seeds": len(c.runs),
    "baseline_seeds": len(base.runs),
    "accuracy_diff": w.diff,
    "diff_ci95_low": w.ci_low,
    "diff_ci95_high": w.ci_high,
    "welch_t": w.t,
    "welch_df": w.df,
    "p_value": w.p_value,
  }


def _speedup_row(c: Configuration, base: Configuration, target: float) -> dict:
  mine = [time_to_target(r, target) for r in c.runs]
  theirs = [time_to_target(r, target) for r in base.runs]
  row = {
    "configuration": c.label,
    "baseline": base.label,
    "target": target,
    "seeds_reached": sum(t is not None for t in mine),
    "seeds": len(mine),
    "baseline_seeds_reached": sum(t is not None for t in theirs),
    "baseline_seeds": len(theirs),
  }
  all_reached = mine and theirs and None not in mine and None not in theirs
  for measure in ("steps", "examples", "wall_seconds"):
    if all_reached:
      r = stats.ratio_of_means(
        [t[measure] for t in theirs], [t[measure] for t in mine], CONFIDENCE
      )
    else:
      r = stats.Ratio(math.nan, math.nan, math.nan, math.nan)
    row.update(
      {
        f"speedup_{measure}": r.ratio,
        f"speedup_{measure}_ci95_low": r.ci_low,
        f"speedup_{measure}_ci95_high": r.ci_high,
      }
    )
  return row


def _find_baseline(configs: list, baseline: str | None) -> Configuration | None:
  if baseline is None:
    return None
  for c in configs:
    if c.label == baseline:
      return c
  if os.path.isdir(baseline):
    under = [
      c
      for c in configs
      if any(
        _override_for(r.path, {baseline: "x"}) for r in c.runs + c.incomplete
      )
    ]
    if len(under) == 1:
      return under[0]
  raise ReportError(
    f"--baseline {baseline!r}: not a configuration label;"
    f" valid: {'; '.join(c.label for c in configs)}"
  )


def build(
  paths: Sequence[str],
  *,
  targets: Sequence[float] = DEFAULT_TARGETS,
  baseline: str | None = None,
  labels: dict | None = None,
) -> Report:
  """Reads the runs under `paths` and computes every table."""
  runs = [load_run(p) for p in find_runs(paths)]
  configs = group(runs, labels)
  base = _find_baseline(configs, baseline)
  if base is not None and not base.runs:
    raise ReportError(f"--baseline {baseline!r}: has no complete run")
  tables = {
    "configurations": [
      {
        "configuration": c.label,
        "eval_set": c.eval_set,
        "model": c.settings.get("model"),
        "schedule": c.settings.get("schedule.name"),
        "batch_size": c.settings.get("batch_size"),
        "total_steps": (c.runs + c.incomplete)[0].total_steps,
        "complete_runs": len(c.runs),
        "incomplete_runs": len(c.incomplete),
        "differing_settings": "; ".join(
          f"{k}={_value_text(v)}" for k, v in c.differing.items()
        ),
      }
      for c in configs
    ],
    "accuracy": [_accuracy_row(c) for c in configs if c.runs],
    "targets": [_target_row(c, t) for c in configs if c.runs for t in targets],
    "comparison": [],
    "speedup": [],
    "runs": [
      {
        "configuration": c.label,
        "seed": r.seed,
        "path": r.path,
        "complete": r.complete,
        "final_accuracy": r.final_accuracy,
        "peak_accuracy": r.peak_accuracy,
        "last_step": int(r.eval_rows[-1]["step"]) if r.eval_rows else None,
        "total_steps": r.total_steps,
        "wall_seconds": r.wall_seconds,
      }
      for c in configs
      for r in c.runs + c.incomplete
    ],
  }
  if base is not None:
    others = [c for c in configs if c is not base and c.runs]
    tables["comparison"] = [_comparison_row(c, base) for c in others]
    tables["speedup"] = [
      _speedup_row(c, base, t) for c in others for t in targets
    ]
  return Report(configs, tuple(targets), base, tables)


# ============================================================================
# Output
# ============================================================================


def _csv_value(value) -> str:
  if value is None:
    return ""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return "nan" if math.isnan(value) else format(value, ".10g")
  return str(value)


def write_csv(path: str, rows: list, columns: Sequence[str] | None = None):
  columns = list(columns or (rows[0].keys() if rows else []))
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
      writer.writerow([_csv_value(row.get(c)) for c in columns])


def _pct(value: float) -> str:
  return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _num(value: float, digits: int = 0) -> str:
  if value is None or math.isnan(value):
    return "n/a"
  return f"{value:,.{digits}f}"


def _spread(row: dict, measure: str, digits: int = 0) -> str:
  """'mean ± std (min–max)' of a time-to-target measure."""
  mean = row[f"{measure}_mean"]
  if math.isnan(mean):
    return "n/a"
  text = _num(mean, digits)
  if not math.isnan(row[f"{measure}_std"]):
    text += f" ± {_num(row[f'{measure}_std'], digits)}"
    text += (
      f" ({_num(row[f'{measure}_min'], digits)}–"
      f"{_num(row[f'{measure}_max'], digits)})"
    )
  return text


def _ratio_text(row: dict, measure: str) -> str:
  value = row[f"speedup_{measure}"]
  if math.isnan(value):
    return "n/a"
  low, high = (
    row[f"speedup_{measure}_ci95_low"],
    row[f"speedup_{measure}_ci95_high"],
  )
  if math.isnan(low):
    return f"{value:.2f}×"
  return f"{value:.2f}× [{low:.2f}, {high:.2f}]"


def _p_text(p: float) -> str:
  if math.isnan(p):
    return "n/a"
  return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list:
  escape = lambda s: str(s).replace("|", "\\|")  # pylint: disable=unnecessary-lambda-assignment
  lines = [
    "| " + " | ".join(header) + " |",
    "|" + "|".join("---" for _ in header) + "|",
  ]
  lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
  return lines


def markdown(report: Report) -> str:
  """report.md: tables, plots and how every number was computed."""
  t = report.tables
  out = _md_summary(report)
  out += _md_configurations(t["configurations"])
  out += _md_accuracy(t["accuracy"])
  out += _md_targets(t["targets"])
  if report.baseline is not None:
    out += _md_baseline(report.baseline.label, t)
  out += _md_plots(plot_names(report))
  out += _md_method()
  out += _md_runs(t["runs"])
  return "\n".join(out) + "\n"


def _md_summary(report: Report) -> list:
  """The title and the first paragraph: runs, targets, baseline."""
  n_complete = sum(len(c.runs) for c in report.configs)
  n_incomplete = sum(len(c.incomplete) for c in report.configs)
  targets = ", ".join(_pct(x) + "%" for x in report.targets)
  out = [
    "# superconv report",
    "",
    f"{n_complete} complete runs in {len(report.configs)} configurations"
    + (
      f" ({n_incomplete} incomplete run(s) listed, not counted)"
      if n_incomplete
      else ""
    )
    + f". Targets: {targets}."
    + (
      f" Baseline: **{report.baseline.label}**."
      if report.baseline
      else " No baseline (--baseline) given: no speed-ups."
    ),
  ]
  if any(c.eval_set != "test" for c in report.configs):
    out += [
      "",
      "Configurations marked *validation* were evaluated on a split"
      " held out from the training set (tuning runs), not on the test"
      " set.",
    ]
  return out


def _md_configurations(rows: list) -> list:
  out = ["", "## Configurations", ""]
  return out + _md_table(
    [
      "configuration",
      "eval set",
      "model",
      "schedule",
      "batch",
      "steps",
      "runs (complete/incomplete)",
      "settings that differ",
    ],
    [
      [
        r["configuration"],
        r["eval_set"],
        r["model"],
        r["schedule"],
        r["batch_size"],
        _num(r["total_steps"]) if r["total_steps"] else "n/a",
        f"{r['complete_runs']}/{r['incomplete_runs']}",
        r["differing_settings"] or "-",
      ]
      for r in rows
    ],
  )


def _md_accuracy(rows: list) -> list:
  out = [
    "",
    "## Final accuracy (%)",
    "",
    "Mean ± sample standard deviation over seeds; 95% CI of the mean"
    " (Student t, n − 1 df); peak = mean over seeds of each run's best"
    " evaluation (optimistic: chosen on the evaluation set).",
    "",
  ]
  return out + _md_table(
    [
      "configuration",
      "seeds",
      "mean ± std",
      "95% CI",
      "min",
      "max",
      "peak",
      "wall s (mean)",
    ],
    [
      [
        r["configuration"],
        r["seeds"],
        f"{_pct(r['final_accuracy_mean'])} ± {_pct(r['final_accuracy_std'])}",
        f"[{_pct(r['ci95_low'])}, {_pct(r['ci95_high'])}]",
        _pct(r["final_accuracy_min"]),
        _pct(r["final_accuracy_max"]),
        _pct(r["peak_accuracy_mean"]),
        _num(r["wall_seconds_mean"], 1),
      ]
      for r in rows
    ],
  )


def _md_targets(rows: list) -> list:
  out = [
    "",
    "## Time to target accuracy",
    "",
    "First evaluation with accuracy ≥ target; mean ± std (min–max)"
    " over the seeds that reached it.",
    "",
  ]
  return out + _md_table(
    [
      "configuration",
      "target",
      "seeds reached",
      "steps",
      "epochs",
      "examples",
      "wall s",
    ],
    [
      [
        r["configuration"],
        _pct(r["target"]) + "%",
        f"{r['seeds_reached']}/{r['seeds']}",
        _spread(r, "steps"),
        _spread(r, "epochs", 1),
        _num(r["examples_mean"]),
        _spread(r, "wall_seconds", 1),
      ]
      for r in rows
    ],
  )


def _md_baseline(base: str, t: dict) -> list:
  """The section against the baseline: accuracy difference, speed-ups."""
  out = [
    "",
    f"## Against the baseline ({base})",
    "",
    "### Final accuracy",
    "",
    "Difference of means (configuration − baseline, percentage"
    " points) with its 95% Welch interval; two-sided Welch t-test.",
    "",
  ]
  out += _md_table(
    ["configuration", "Δ accuracy (pp)", "95% CI", "t", "df", "p"],
    [
      [
        r["configuration"],
        _pct(r["accuracy_diff"]),
        f"[{_pct(r['diff_ci95_low'])}, {_pct(r['diff_ci95_high'])}]",
        _num(r["welch_t"], 3),
        _num(r["welch_df"], 1),
        _p_text(r["p_value"]),
      ]
      for r in t["comparison"]
    ],
  )
  return out + _md_speedup(t["speedup"])


def _md_speedup(rows: list) -> list:
  out = [
    "",
    "### Speed-up to target",
    "",
    "Ratio of mean times, baseline / configuration (> 1: the"
    " configuration is faster), with a 95% delta-method interval on"
    " the log ratio; n/a unless every seed of both reached the"
    " target.",
    "",
  ]
  return out + _md_table(
    [
      "configuration",
      "target",
      "seeds reached (config/baseline)",
      "steps",
      "examples",
      "wall-clock",
    ],
    [
      [
        r["configuration"],
        _pct(r["target"]) + "%",
        f"{r['seeds_reached']}/{r['seeds']} vs"
        f" {r['baseline_seeds_reached']}/{r['baseline_seeds']}",
        _ratio_text(r, "steps"),
        _ratio_text(r, "examples"),
        _ratio_text(r, "wall_seconds"),
      ]
      for r in rows
    ],
  )


def _md_plots(names: Sequence[str]) -> list:
  note = "Lines: mean over seeds; bands: min to max over seeds."
  if WALLCLOCK_PLOT in names:
    note += (
      " Wall-clock x positions are the mean over seeds of each"
      " evaluation's time."
    )
  else:
    note += (
      " No accuracy-versus-wall-clock plot: wall-clock compares only"
      " between runs that had the same machine to themselves"
      " (--wallclock_plot draws it)."
    )
  out = ["", "## Plots", "", note, ""]
  return out + [f"![{name[:-4]}]({name})" for name in names]


def _md_method() -> list:
  return [
    "",
    "## Method",
    "",
    "- A run is complete when metrics.jsonl has an evaluation at its"
    " last step (config num_steps, or round(num_epochs × steps per"
    " epoch)). Configurations: config.json minus "
    + ", ".join(IGNORED_KEYS)
    + ".",
    "- 95% CI of a mean: mean ± t(0.975, n−1) · s / √n.",
    "- Welch: t = (m₁ − m₂) / √(s₁²/n₁ + s₂²/n₂), Welch–Satterthwaite"
    " df, two-sided p from the t distribution"
    " (scipy.stats.ttest_ind, equal_var=False).",
    "- Speed-up r = mean(baseline) / mean(configuration) of the time to"
    " target; interval r · exp(± t(0.975, ν) · se) with se² ="
    " s_b²/(n_b m_b²) + s_c²/(n_c m_c²) and ν its Welch–Satterthwaite"
    " df (delta method on log r). Zero spread in both gives the point"
    " r; fewer than two seeds, no interval.",
    "- Wall-clock is the run's logged wall_time: it includes compilation"
    " and evaluation time, not time between an interruption and its"
    " resume.",
  ]


def _md_runs(rows: list) -> list:
  out = ["", "## Runs", ""]
  return out + _md_table(
    [
      "configuration",
      "seed",
      "run",
      "complete",
      "final acc (%)",
      "steps",
      "wall s",
    ],
    [
      [
        r["configuration"],
        "-" if r["seed"] is None else r["seed"],
        r["path"],
        "yes" if r["complete"] else "no",
        _pct(r["final_accuracy"]),
        f"{_num(r['last_step'])}/{_num(r['total_steps'])}"
        if r["last_step"] is not None and r["total_steps"]
        else "n/a",
        _num(r["wall_seconds"], 1),
      ]
      for r in rows
    ],
  )


# --- Plots -------------------------------------------------------------------


def _curves(runs: list, rows_of, x_key: str, y_key: str):
  """Mean/min/max of y over runs at the steps all runs logged; mean x."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  per_run = [{int(r["step"]): r for r in rows_of(run)} for run in runs]
  steps = (
    sorted(set.intersection(*[set(p) for p in per_run])) if per_run else []
  )
  if not steps:
    return None
  x = np.array([[_float(p[s].get(x_key)) for s in steps] for p in per_run])
  y = np.array([[_float(p[s].get(y_key)) for s in steps] for p in per_run])
  return x.mean(0), y.mean(0), y.min(0), y.max(0)


@dataclasses.dataclass(frozen=True)
class _Plot:
  """One PNG: the mean of `y_key` over seeds against `x_key`."""

  name: str
  title: str
  x_key: str
  x_label: str
  y_key: str
  y_label: str
  rows: str  # The RunData rows plotted: "eval_rows" or "train_rows".
  y_scale: float = 1.0  # 100: a fraction plotted in %.
  log_y: bool = False


def _accuracy_plot(name: str, x_key: str, x_label: str, versus: str):
  return _Plot(
    name,
    f"Evaluation accuracy (%) vs {versus}",
    x_key,
    x_label,
    "eval_accuracy",
    "evaluation accuracy (%)",
    "eval_rows",
    y_scale=100.0,
  )


_PLOT_SPECS = {
  p.name: p
  for p in (
    _accuracy_plot("accuracy_vs_steps.png", "step", "step", "steps"),
    _accuracy_plot("accuracy_vs_epochs.png", "epoch", "epoch", "epochs"),
    _accuracy_plot(
      WALLCLOCK_PLOT,
      "wall_time",
      "wall-clock seconds (mean over seeds)",
      "wall-clock",
    ),
    _Plot(
      "train_loss.png",
      "Training loss (cross-entropy, logged steps)",
      "step",
      "step",
      "train_loss",
      "training loss",
      "train_rows",
      log_y=True,  # When every loss is positive.
    ),
    _Plot(
      "lr_schedule.png",
      "Learning rate (logged steps)",
      "step",
      "step",
      "learning_rate",
      "learning rate",
      "train_rows",
    ),
  )
}


def _draw_curves(ax, spec: _Plot, configs: list, colours) -> None:
  """The mean line and min-max band of every configuration."""
  for i, c in enumerate(configs):
    curve = _curves(
      c.runs, lambda run: getattr(run, spec.rows), spec.x_key, spec.y_key
    )
    if curve is None:
      continue
    x = curve[0]
    mean, low, high = (v * spec.y_scale for v in curve[1:])
    colour = colours[i % len(colours)]
    n = len(c.runs)
    ax.plot(x, mean, color=colour, label=f"{c.label}: mean of {n} seeds")
    ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)


def _plain_log_axis(ax) -> None:
  """A log y axis labelled 1.5, 2, 3 instead of 1.5x10^0, 2x10^0, 3x10^0:
  ticks at 1-2-5 per decade, denser when the data span under a decade."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  low, high = ax.get_ylim()
  narrow = high < 10 * low
  subs = (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8) if narrow else (1, 2, 5)
  ax.yaxis.set_major_locator(ticker.LogLocator(subs=subs))
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _plot(plt, spec: _Plot, configs: list, targets: Sequence[float]):
  """The matplotlib figure of one plot."""
  from matplotlib import patches  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5))
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  _draw_curves(ax, spec, configs, colours)
  ax.set_xlabel(spec.x_label)
  ax.set_ylabel(spec.y_label)
  ax.set_title(spec.title)
  ax.grid(alpha=0.3)
  if spec.log_y:
    ax.set_yscale("log")
    _plain_log_axis(ax)
  if spec.y_key == "eval_accuracy":
    for k, target in enumerate(targets):
      ax.axhline(
        target * spec.y_scale,
        color="0.4",
        linestyle=("--", ":", "-.")[k % 3],
        linewidth=0.8,
        label=f"target {_pct(target)}%",
      )
  handles, _ = ax.get_legend_handles_labels()
  handles.append(patches.Patch(color="0.5", alpha=0.3, label=BAND_LABEL))
  ax.legend(handles=handles, fontsize=7)
  fig.tight_layout()
  return fig


def figure(report: Report, name: str):
  """The matplotlib figure of plot `name` (one of `plot_names(report)`)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  configs = [c for c in report.configs if c.runs]
  spec = _PLOT_SPECS[name]
  if spec.log_y and not all(
    _float(r.get("train_loss")) > 0
    for c in configs
    for run in c.runs
    for r in run.train_rows
  ):
    spec = dataclasses.replace(spec, log_y=False)
  return _plot(plt, spec, configs, report.targets)


def write_plots(report: Report, out: str) -> None:
  """The PNGs of `plot_names(report)` (matplotlib, Agg)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  for name in plot_names(report):
    fig = figure(report, name)
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)


def write(report: Report, out: str) -> list[str]:
  """report.md, the CSVs and the PNGs in `out`; returns their paths."""
  os.makedirs(out, exist_ok=True)
  paths = []
  for name, rows in report.tables.items():
    path = os.path.join(out, f"{name}.csv")
    write_csv(path, rows, _COLUMNS.get(name))
    paths.append(path)
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write(markdown(report))
  paths.append(path)
  write_plots(report, out)
  paths += [os.path.join(out, p) for p in plot_names(report)]
  return paths


# CSV columns of tables that may be empty (no baseline): header still written.
_COLUMNS = {
  "comparison": [
    "configuration",
    "baseline",
    "seeds",
    "baseline_seeds",
    "accuracy_diff",
    "diff_ci95_low",
    "diff_ci95_high",
    "welch_t",
    "welch_df",
    "p_value",
  ],
  "speedup": [
    "configuration",
    "baseline",
    "target",
    "seeds_reached",
    "seeds",
    "baseline_seeds_reached",
    "baseline_seeds",
  ]
  + [
    f"speedup_{m}{s}"
    for m in ("steps", "examples", "wall_seconds")
    for s in ("", "_ci95_low", "_ci95_high")
  ],
}


# ============================================================================
# Budget study (superconv.budget): arms x budgets x seeds
# ============================================================================


def budget_analysis(
  report: Report,
  *,
  mode: str = "auto",
  baselines: Sequence[str] = (),
  labels: dict | None = None,
):
  """The accuracy-versus-budget analysis of the report's runs, or None.

  Arms come from `superconv.budget.layout`; an arm is named by --label
  when all its runs lie under one labelled DIR, else by the settings that
  differ between arms. A run's budget is its epoch at its last evaluation.
  """
  configs = [c for c in report.configs if c.runs]
  try:
    lay = budget_lib.layout([c.settings for c in configs], mode)
    if lay is None:
      if baselines:
        raise ReportError(
          "--budget-baseline: the runs are not arms x budgets (they differ"
          " in more than the budget and schedule.*); force it with"
          " --budget-analysis on"
        )
      return None
    auto, _ = _auto_labels(list(lay.arm_settings))
    arm_runs = [
      [r for c, k in zip(configs, lay.arm_of) if k == i for r in c.runs]
      for i in range(len(auto))
    ]
    given = [
      {_override_for(r.path, labels or {}) for r in rs} for rs in arm_runs
    ]
    names = [
      next(iter(g)) if len(g) == 1 and None not in g else a
      for g, a in zip(given, auto)
    ]
    if len(set(names)) < len(names):
      names = auto
    points = [
      budget_lib.Point(
        names[i],
        _float(r.final.get("epoch", r.config.get("num_epochs"))),
        r.final_accuracy,
        r.seed,
        r.path,
      )
      for i, rs in enumerate(arm_runs)
      for r in rs
    ]
    return budget_lib.analyze(points, baselines)
  except budget_lib.BudgetError as e:
    raise ReportError(str(e)) from None


def write_budget(analysis, out: str) -> list[str]:
  """The budget CSVs and plot in `out`; its section into out/report.md."""
  paths = []
  for name, rows in budget_lib.tables(analysis).items():
    paths.append(os.path.join(out, f"{name}.csv"))
    write_csv(paths[-1], rows, budget_lib.COLUMNS[name])
  paths.append(os.path.join(out, budget_lib.PLOT))
  budget_lib.write_plot(analysis, paths[-1])
  path = os.path.join(out, "report.md")
  with open(path) as f:
    head, sep, tail = f.read().partition("\n## ")
  with open(path, "w") as f:
    f.write(f"{head}\n\n{budget_lib.markdown(analysis)}{sep}{tail}")
  return paths


# ============================================================================
# Command line
# ============================================================================

PROG = "superconv.report"


def parse_targets(text: str) -> tuple:
  try:
    targets = tuple(float(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise ReportError(
      f"--targets {text!r}: expected accuracies such as 0.90,0.91,0.92"
    ) from None
  if not targets or not all(0 < t <= 1 for t in targets):
    raise ReportError(
      f"--targets {text!r}: expected accuracies in (0, 1], e.g. 0.90,0.91,0.92"
    )
  return tuple(sorted(set(targets)))


def parse_labels(items: Sequence[str]) -> dict:
  labels = {}
  for item in items:
    directory, sep, name = item.rpartition("=")
    if not sep or not directory or not name.strip():
      raise ReportError(f"--label {item!r}: expected DIR=NAME")
    labels[directory] = name.strip()
  return labels


def _define_flags(fv) -> None:
  """The flags in `fv`; the run directories are the arguments."""
  flags.DEFINE_string("out", None, "Output directory.", flag_values=fv)
  flags.DEFINE_list(
    "targets",
    [str(t) for t in DEFAULT_TARGETS],
    "Target accuracies.",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "baseline",
    None,
    "Configuration label (or directory) to compare against.",
    flag_values=fv,
  )
  flags.DEFINE_multi_string(
    "label",
    [],
    "DIR=NAME: name the configuration(s) of the runs under DIR",
    flag_values=fv,
  )
  flags.DEFINE_enum(
    "budget_analysis",
    "auto",
    budget_lib.MODES,
    "Accuracy-versus-budget section (superconv.budget): auto = when the"
    " configurations differ only in num_epochs/num_steps and schedule.*.",
    flag_values=fv,
  )
  flags.DEFINE_list(
    "budget_baseline",
    [],
    "Baseline arms of the budget study, e.g. piecewise,linear.",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "wallclock_plot",
    False,
    "Also plot accuracy against wall-clock time (only meaningful when every"
    " run had the same machine to itself).",
    flag_values=fv,
  )
  flags.mark_flags_as_required(["out"], flag_values=fv)
  cli.hyphen_aliases(fv)


def main(argv: Sequence[str]) -> int:
  """Command line (argv without the program); returns the exit status
  (0 ok, 2 bad input)."""
  fv, dirs = cli.parse_command(
    argv, _define_flags, prog=PROG, doc=__doc__, takes_args=True
  )
  try:
    if not dirs:
      raise ReportError(
        "name the run directories (or directories above them) to report on"
      )
    try:  # Empty, a file, a broken link, not writable: refused up front.
      out = cli.check_workdir(fv.out, flag="--out")
    except ValueError as e:
      raise ReportError(str(e)) from None
    labels = parse_labels(fv.label)
    report = build(
      dirs,
      targets=parse_targets(",".join(fv.targets)),
      baseline=fv.baseline,
      labels=labels,
    )
    report = dataclasses.replace(report, wallclock_plot=fv.wallclock_plot)
    analysis = budget_analysis(
      report,
      mode=fv.budget_analysis,
      baselines=[b.strip() for b in fv.budget_baseline if b.strip()],
      labels=labels,
    )
    write(report, out)
    if analysis is not None:
      write_budget(analysis, out)
  except ReportError as e:
    return cli.error(e, prog=PROG)
  if analysis is not None:
    print(budget_lib.markdown(analysis))
  print(markdown(report).split("\n## Plots")[0])
  print(f"wrote {os.path.join(out, 'report.md')}, CSVs and plots")
  return cli.EXIT_OK


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
