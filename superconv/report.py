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
accuracy_vs_steps.png, accuracy_vs_epochs.png, accuracy_vs_wallclock.png,
train_loss.png, lr_schedule.png. The output depends only on the runs and the
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

import argparse
from collections.abc import Sequence
import csv
import dataclasses
import json
import math
import os
import sys

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
  "accuracy_vs_wallclock.png",
  "train_loss.png",
  "lr_schedule.png",
)


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

  out += ["", "## Configurations", ""]
  out += _md_table(
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
      for r in t["configurations"]
    ],
  )

  out += [
    "",
    "## Final accuracy (%)",
    "",
    "Mean ± sample standard deviation over seeds; 95% CI of the mean"
    " (Student t, n − 1 df); peak = mean over seeds of each run's best"
    " evaluation (optimistic: chosen on the evaluation set).",
    "",
  ]
  out += _md_table(
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
      for r in t["accuracy"]
    ],
  )

  out += [
    "",
    "## Time to target accuracy",
    "",
    "First evaluation with accuracy ≥ target; mean ± std (min–max)"
    " over the seeds that reached it.",
    "",
  ]
  out += _md_table(
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
      for r in t["targets"]
    ],
  )

  if report.baseline is not None:
    base = report.baseline.label
    out += [
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
    out += [
      "",
      "### Speed-up to target",
      "",
      "Ratio of mean times, baseline / configuration (> 1: the"
      " configuration is faster), with a 95% delta-method interval on"
      " the log ratio; n/a unless every seed of both reached the"
      " target.",
      "",
    ]
    out += _md_table(
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
        for r in t["speedup"]
      ],
    )

  out += [
    "",
    "## Plots",
    "",
    "Lines: mean over seeds; bands: min to max over seeds. Wall-clock"
    " x positions are the mean over seeds of each evaluation's time.",
    "",
  ]
  out += [f"![{name[:-4]}]({name})" for name in PLOTS]

  out += [
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

  out += ["", "## Runs", ""]
  out += _md_table(
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
      for r in t["runs"]
    ],
  )
  return "\n".join(out) + "\n"


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


def write_plots(report: Report, out: str) -> None:
  """The PNGs named in PLOTS (matplotlib, Agg)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  configs = [c for c in report.configs if c.runs]
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  evals = lambda run: run.eval_rows  # pylint: disable=unnecessary-lambda-assignment
  trains = lambda run: run.train_rows  # pylint: disable=unnecessary-lambda-assignment

  def figure(
    name,
    title,
    x_key,
    x_label,
    y_key,
    y_label,
    rows_of,
    zoom=False,
    log_y=False,
  ):
    fig, axes = plt.subplots(
      1, 2 if zoom else 1, figsize=(12 if zoom else 7, 4.5), squeeze=False
    )
    top = -math.inf
    for i, c in enumerate(configs):
      curve = _curves(c.runs, rows_of, x_key, y_key)
      if curve is None:
        continue
      x, mean, low, high = curve
      top = max(top, float(mean.max()))
      for ax in axes[0]:
        colour = colours[i % len(colours)]
        ax.plot(x, mean, color=colour, label=f"{c.label} (n={len(c.runs)})")
        ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
    for ax in axes[0]:
      ax.set_xlabel(x_label)
      ax.set_ylabel(y_label)
      ax.grid(alpha=0.3)
      if log_y:
        ax.set_yscale("log")
      if y_key == "eval_accuracy":
        for target in report.targets:
          ax.axhline(target, color="0.5", linestyle="--", linewidth=0.8)
    axes[0][0].set_title(title)
    axes[0][0].legend(fontsize=7)
    if zoom and math.isfinite(top):
      high = min(1.0, top + 0.01)
      axes[0][1].set_ylim(high - 0.10, high)
      axes[0][1].set_title("zoom: top 10 percentage points")
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)

  figure(
    "accuracy_vs_steps.png",
    "Evaluation accuracy vs steps",
    "step",
    "step",
    "eval_accuracy",
    "accuracy",
    evals,
    zoom=True,
  )
  figure(
    "accuracy_vs_epochs.png",
    "Evaluation accuracy vs epochs",
    "epoch",
    "epoch",
    "eval_accuracy",
    "accuracy",
    evals,
    zoom=True,
  )
  figure(
    "accuracy_vs_wallclock.png",
    "Evaluation accuracy vs wall-clock",
    "wall_time",
    "wall-clock seconds (mean over seeds)",
    "eval_accuracy",
    "accuracy",
    evals,
    zoom=True,
  )
  positive = all(
    _float(r.get("train_loss")) > 0
    for c in configs
    for run in c.runs
    for r in run.train_rows
  )
  figure(
    "train_loss.png",
    "Training loss (logged rows)",
    "step",
    "step",
    "train_loss",
    "train loss",
    trains,
    log_y=positive,
  )
  figure(
    "lr_schedule.png",
    "Learning rate (logged rows)",
    "step",
    "step",
    "learning_rate",
    "learning rate",
    trains,
  )


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
  paths += [os.path.join(out, p) for p in PLOTS]
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


def main(argv: Sequence[str]) -> int:
  """Command line; returns the exit status (0 ok, 2 bad input)."""
  p = argparse.ArgumentParser(
    prog="python -m superconv.report",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "dirs",
    nargs="+",
    metavar="DIR",
    help="run directories or directories above them (sweeps)",
  )
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument(
    "--targets",
    default=",".join(map(str, DEFAULT_TARGETS)),
    help="target accuracies (default 0.9,0.91,0.92)",
  )
  p.add_argument(
    "--baseline",
    default=None,
    help="configuration label (or directory) to compare against",
  )
  p.add_argument(
    "--label",
    action="append",
    default=[],
    metavar="DIR=NAME",
    help="name the configuration(s) of the runs under DIR",
  )
  p.add_argument(
    "--budget-analysis",
    choices=budget_lib.MODES,
    default="auto",
    help="accuracy-versus-budget section (superconv.budget): auto = when"
    " the configurations differ only in num_epochs/num_steps and schedule.*",
  )
  p.add_argument(
    "--budget-baseline",
    default="",
    metavar="ARMS",
    help="baseline arms of the budget study, e.g. piecewise,linear",
  )
  args = p.parse_args(argv)
  try:
    try:  # Empty, a file, a broken link, not writable: refused up front.
      args.out = cli.check_workdir(args.out, flag="--out")
    except ValueError as e:
      raise ReportError(str(e)) from None
    labels = parse_labels(args.label)
    report = build(
      args.dirs,
      targets=parse_targets(args.targets),
      baseline=args.baseline,
      labels=labels,
    )
    analysis = budget_analysis(
      report,
      mode=args.budget_analysis,
      baselines=[
        b.strip() for b in args.budget_baseline.split(",") if b.strip()
      ],
      labels=labels,
    )
    write(report, args.out)
    if analysis is not None:
      write_budget(analysis, args.out)
  except ReportError as e:
    sys.stderr.write(f"superconv.report: error: {e}\n")
    return 2
  if analysis is not None:
    print(budget_lib.markdown(analysis))
  print(markdown(report).split("\n## Plots")[0])
  print(f"wrote {os.path.join(args.out, 'report.md')}, CSVs and plots")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
