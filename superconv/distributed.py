"""Multi-process (multi-host) start-up: `jax.distributed.initialize()`.

One trainer process runs per host (GPU node or TPU VM worker), each driving
its local devices; `maybe_initialize()` connects them before JAX is first
used. What the environment asks for, in this order:

  SUPERCONV_DISTRIBUTED=0      never initialize (one process, whatever else
                               is set).
  SUPERCONV_COORDINATOR_ADDRESS, SUPERCONV_NUM_PROCESSES, SUPERCONV_PROCESS_ID
                               (exported by launch/gpu.sh): initialize with
                               them when SUPERCONV_NUM_PROCESSES > 1.
  SUPERCONV_DISTRIBUTED=1, or TPU_WORKER_HOSTNAMES naming several workers
  (a Cloud TPU VM pod slice): initialize with no arguments, letting JAX
                               detect the cluster (TPU, SLURM, Open MPI).
  otherwise                    one process: nothing to do.

On CPU (tests), cross-process collectives use gloo.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("superconv")

ADDRESS_ENV = "SUPERCONV_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "SUPERCONV_NUM_PROCESSES"
PROCESS_ID_ENV = "SUPERCONV_PROCESS_ID"
SWITCH_ENV = "SUPERCONV_DISTRIBUTED"
_TPU_WORKERS_ENV = "TPU_WORKER_HOSTNAMES"


def _int_env(env, name: str, minimum: int) -> int:
  value = env.get(name, "").strip()
  try:
    number = int(value)
  except ValueError:
    number = minimum - 1
  if number < minimum:
    raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
  return number


def settings(env=None) -> dict | None:
  """The keyword arguments for jax.distributed.initialize, or None.

  {} means "initialize with no arguments" (cluster auto-detection); None
  means one process. Raises ValueError naming the variable when the
  settings are incomplete or invalid.
  """
  env = os.environ if env is None else env
  switch = env.get(SWITCH_ENV, "").strip()
  if switch not in ("", "0", "1"):
    raise ValueError(f"{SWITCH_ENV}: expected 0 or 1, got {switch!r}")
  if switch == "0":
    return None
  explicit = [
    n
    for n in (ADDRESS_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)
    if env.get(n, "").strip()
  ]
  if explicit:
    num_processes = _int_env(env, NUM_PROCESSES_ENV, 1)
    if num_processes > 1:
      missing = [n for n in (ADDRESS_ENV, PROCESS_ID_ENV) if n not in explicit]
      if missing:
        raise ValueError(
          f"{', '.join(missing)}: required when"
          f" {NUM_PROCESSES_ENV}={num_processes}"
        )
      process_id = _int_env(env, PROCESS_ID_ENV, 0)
      if process_id >= num_processes:
        raise ValueError(
          f"{PROCESS_ID_ENV}: {process_id} is not below"
          f" {NUM_PROCESSES_ENV}={num_processes}"
        )
      return {
        "coordinator_address": env[ADDRESS_ENV].strip(),
        "num_processes": num_processes,
        "process_id": process_id,
      }
    if switch != "1":
      return None
  if switch == "1" or "," in env.get(_TPU_WORKERS_ENV, ""):
    return {}
  return None


def maybe_initialize(env=None) -> bool:
  """Calls jax.distributed.initialize() if the environment asks for it.

  Must run before the first use of a JAX backend (jax.devices(), any
  computation). Returns whether it initialized.
  """
  kwargs = settings(env)
  if kwargs is None:
    return False
  import jax  # pylint: disable=g-import-not-at-top

  # Cross-process collectives of the CPU backend (the multi-process tests
  # run on CPU); the GPU/TPU backends have their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  log.info(
    "Process %d of %d, %d local of %d devices.",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True
