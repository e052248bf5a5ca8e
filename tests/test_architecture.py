"""The package's shape (docs/architecture.md): layers, no import circle,
a leaf config, short functions. Read with `ast`, nothing is imported."""

import ast
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "superconv")

# Each module's layer; an import may point to its own layer or lower, never
# higher (docs/architecture.md says what each layer owns).
LEAF, PARTS, RUN, PLUMBING, DRIVERS = range(5)
LAYERS = {
  # The leaf: the schema and the standard library's kind of helpers.
  "config": LEAF,
  "storage": LEAF,
  "lock": LEAF,
  "distributed": LEAF,
  # Parts: each one job, taking a config or its values.
  "data": PARTS,
  "input_pipeline": PARTS,
  "models": PARTS,
  "conv": PARTS,
  "batchnorm": PARTS,
  "schedules": PARTS,
  "stats": PARTS,
  "budget": PARTS,
  "bench_common": PARTS,
  # The run: the training loop, its checkpoints and metrics.
  "train": RUN,
  "checkpoint": RUN,
  "metric_writer": RUN,
  # The LR range test: its loop over the trainer's step, suggestions, plot
  # (its command line is range_test_main).
  "lr_range_test": RUN,
  # The drivers' shared command-line plumbing (checks a config as main).
  "cli": PLUMBING,
  # Drivers, the Python API and the shipped config files.
  "superconv": DRIVERS,
  "api": DRIVERS,
  "configs": DRIVERS,
  "main": DRIVERS,
  "evaluate": DRIVERS,
  "range_test_main": DRIVERS,
  "schedules_main": DRIVERS,
  "sweep": DRIVERS,
  "report": DRIVERS,
  "bench": DRIVERS,
}

MAX_LINES = 80
MAX_LOOP_LINES = 60


def _modules() -> dict[str, str]:
  """Module name (as in LAYERS, configs/*.py as 'configs') -> file."""
  out = {}
  for dirpath, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, PACKAGE)[: -len(".py")].split(os.sep)
      if rel[-1] == "__init__":
        rel = rel[:-1]
      out[".".join(rel) or "superconv"] = path
  return out


def _imports(path: str) -> set[str]:
  """superconv modules a file imports, at module level or in functions."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      base = node.module or ""
      names = [base] + [f"{base}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      parts = name.split(".")
      if parts[0] == "superconv" and len(parts) > 1:
        found.add(parts[1] if parts[1] != "configs" else "configs")
  return found


def _layer(module: str) -> int:
  top = "configs" if module.startswith("configs") else module
  assert top in LAYERS, f"{module}: add it to LAYERS (and the docs)"
  return LAYERS[top]


def _graph() -> dict[str, set[str]]:
  graph = {}
  for module, path in _modules().items():
    top = module.split(".")[0] if module.startswith("configs") else module
    graph.setdefault(top, set()).update(_imports(path) - {top})
  return graph


def test_every_module_has_a_layer():
  for module in _modules():
    _layer(module)


def test_no_import_runs_up_a_layer():
  wrong = [
    f"{module} -> {dep}"
    for module, deps in _graph().items()
    for dep in deps
    if _layer(dep) > _layer(module)
  ]
  assert wrong == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The import circles of `graph` (each found once, from a DFS)."""
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        cycles.append(stack[stack.index(dep) :] + [dep])
      elif dep not in state:
        visit(dep)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  return cycles


def test_the_cycle_finder_finds_a_circle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
  assert _cycles(_graph()) == []


def test_no_module_imports_itself():
  selves = {
    module
    for module, path in _modules().items()
    if module != "configs" and module in _imports(path)
  }
  assert selves == set()


def test_config_is_a_leaf_importing_only_the_standard_library_and_mlc():
  path = os.path.join(PACKAGE, "config.py")
  tops = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      tops.update(a.name.split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      tops.add((node.module or "").split(".")[0])
  allowed = set(sys.stdlib_module_names) | {"ml_collections"}
  assert tops - allowed == set()
  assert "ml_collections" in tops


def _function_lengths() -> dict[str, int]:
  lengths = {}
  for path in _modules().values():
    rel = os.path.relpath(path, PACKAGE)
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        key = f"{rel}:{node.name}"
        length = node.end_lineno - node.lineno + 1
        lengths[key] = max(length, lengths.get(key, 0))
  return lengths


def test_no_function_is_longer_than_80_lines():
  lengths = _function_lengths()
  assert {k: n for k, n in lengths.items() if n > MAX_LINES} == {}


def test_the_training_loop_is_at_most_60_lines():
  assert _function_lengths()["train.py:train_and_evaluate"] <= MAX_LOOP_LINES


@pytest.mark.parametrize("module", ["train.py", "checkpoint.py", "api.py"])
def test_no_nonlocal_in_the_run(module):
  tree = ast.parse(open(os.path.join(PACKAGE, module)).read())
  assert not [n for n in ast.walk(tree) if isinstance(n, ast.Nonlocal)]
