"""Joining a multi-host run: `jax.distributed.initialize` from launch.py's flags or the cluster's
environment, and "process 0 does it, the others wait for its outcome".

Where the coordinator comes from, first match wins:
  1. `--coordinator HOST:PORT --num-processes N --process-id I`;
  2. `JAX_COORDINATOR_ADDRESS` with `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` in the environment;
  3. a cluster JAX detects by itself (Slurm with more than one task, Open MPI with more than one rank,
     a multi-host Cloud TPU slice): `jax.distributed.initialize()` without arguments;
  4. none of these: one process, nothing to initialize.
CPU collectives go through gloo (the setting concerns CPU devices only), so the same command also
runs several processes on one machine over loopback.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import jax

T = TypeVar("T")


def _int_env(name: str) -> int | None:
  value = os.environ.get(name, "")
  return int(value) if value.strip().isdigit() else None


def cluster_detected(env: dict[str, str] | None = None) -> str | None:
  """The name of a multi-process cluster environment JAX can read by itself, or None."""
  env = os.environ if env is None else env
  count = lambda key: int(env[key]) if env.get(key, "").isdigit() else 0
  if "SLURM_JOB_ID" in env and count("SLURM_NTASKS") > 1 and "SLURM_PROCID" in env:
    return "Slurm"
  if "OMPI_MCA_orte_hnp_uri" in env and count("OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI"
  if "," in env.get("TPU_WORKER_HOSTNAMES", "") or "," in env.get("TPU_PROCESS_ADDRESSES", ""):
    return "Cloud TPU"
  return None


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> str | None:
  """Joins the run described by the flags or the environment; returns how (None: a single process).
  ValueError for inconsistent flags or variables (a one-line message)."""
  if coordinator is None and (num_processes is not None or process_id is not None):
    raise ValueError("--num-processes / --process-id need --coordinator HOST:PORT")
  how = None
  if coordinator is None and os.environ.get("JAX_COORDINATOR_ADDRESS"):
    coordinator = os.environ["JAX_COORDINATOR_ADDRESS"]
    num_processes, process_id = _int_env("JAX_NUM_PROCESSES"), _int_env("JAX_PROCESS_ID")
    if num_processes is None or process_id is None:
      raise ValueError("JAX_COORDINATOR_ADDRESS is set: also set JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=I")
    how = "environment (JAX_COORDINATOR_ADDRESS)"
  if coordinator is not None:
    if num_processes is None or process_id is None or not 0 <= process_id < num_processes:
      raise ValueError("--coordinator needs --num-processes N and --process-id I with 0 <= I < N")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    return how or "flags"
  cluster = cluster_detected()
  if cluster is not None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize()
    return cluster
  return None


class ProcessZeroFailed(RuntimeError):
  """Process 0 failed at a step the other processes were waiting for; the message carries its error."""


def process_zero_first(what: str, fn: Callable[[], T], poll_s: float = 60.0) -> T:
  """Process 0 runs `fn` (e.g. building the data set); the others wait for its outcome through the
  coordinator's key-value store (no device collective, so a build of hours does not time out), then run
  `fn` themselves (opening what process 0 built). If process 0 fails, the others raise
  ProcessZeroFailed with its message instead of waiting forever."""
  if jax.process_count() == 1:
    return fn()
  from jax._src import distributed as jax_distributed  # the coordinator's key-value store

  client = jax_distributed.global_state.client
  key = f"mian_jax/{what}"
  if jax.process_index() == 0:
    try:
      result = fn()
    except BaseException as e:
      client.key_value_set(key, f"error:{e}")
      raise
    client.key_value_set(key, "ok")
    return result
  while True:
    try:
      outcome = client.blocking_key_value_get(key, int(poll_s * 1000))
      break
    except Exception as e:  # a timeout: keep waiting; anything else: the coordinator is gone
      if "DEADLINE_EXCEEDED" not in str(e) and "timed out" not in str(e).lower():
        raise ProcessZeroFailed(f"process 0 stopped while {what} ({str(e).splitlines()[0]})") from None
  if outcome.startswith("error:"):
    raise ProcessZeroFailed(f"process 0 failed while {what}: {outcome[len('error:') :]}")
  return fn()
