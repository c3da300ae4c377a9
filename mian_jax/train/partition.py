"""The one module that knows about devices: mesh, shardings, jit with donation, host -> global arrays.

Data parallelism over every device of every process: a 1-D mesh with axis `data`; the batch is split
along it (NamedSharding P('data')) and the parameters and optimizer state are replicated (P()).
jit + NamedSharding replaces the old pmap / replicate / unreplicate pattern.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D `data` mesh over `devices` (default: every device of every process)."""
  return Mesh(np.array(devices or jax.devices()), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def per_process_batch(global_batch: int, mesh: Mesh) -> int:
  """This process's share of the global batch; it must split evenly over processes and devices."""
  n_dev = mesh.devices.size
  if global_batch % n_dev:
    raise ValueError(f"batch size {global_batch} does not split over {n_dev} devices; use a multiple of {n_dev}")
  return global_batch // jax.process_count()


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> one global jax.Array per field, sharded over the `data` axis."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def jit_init(init_fn: Callable[[jax.Array], Any], mesh: Mesh) -> Callable[[jax.Array], Any]:
  """jit the state initialiser so that the state is born replicated on every device."""
  return jax.jit(init_fn, out_shardings=replicated(mesh))


def jit_train_step(step_fn: Callable, mesh: Mesh) -> Callable:
  """(state, batch) -> (state, metrics): the state is donated, so its old buffers are reused."""
  rep, data = replicated(mesh), batch_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def jit_eval_step(eval_fn: Callable, mesh: Mesh) -> Callable:
  rep, data = replicated(mesh), batch_sharding(mesh)
  return jax.jit(eval_fn, in_shardings=(rep, data), out_shardings=data)


def gather(tree: Any) -> Any:
  """Global arrays -> full numpy arrays on every process (each row once)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
