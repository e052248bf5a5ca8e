"""superconv: one-cycle against tuned baselines on CIFAR ResNets, in JAX.

The Python API (docs/python_api.md) is importable from here; `import
superconv` itself imports no JAX: each name loads its module on first use.
"""

from __future__ import annotations

# The names of superconv.api offered here.
_API = ("load_checkpoint",)

__all__ = list(_API)


def __getattr__(name: str):
  if name in _API:
    from superconv import api  # pylint: disable=g-import-not-at-top

    return getattr(api, name)
  raise AttributeError(f"module 'superconv' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
