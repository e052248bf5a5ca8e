"""superconv: one-cycle against tuned baselines on CIFAR ResNets, in JAX.

The Python API (docs/python_api.md): `train_and_evaluate`, `lr_range_test`,
`load_checkpoint` and the shipped configs, `configs.get("quick")`. `import
superconv` itself imports no JAX: each name loads its module on first use.
"""

from __future__ import annotations

import importlib

# The names of superconv.api offered here.
_API = (
  "train_and_evaluate",
  "lr_range_test",
  "load_checkpoint",
  "Result",
  "RangeTestResult",
)

__all__ = [*_API, "configs"]


def __getattr__(name: str):
  if name in _API:
    return getattr(importlib.import_module("superconv.api"), name)
  if name == "configs":
    return importlib.import_module("superconv.configs")
  raise AttributeError(f"module 'superconv' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
