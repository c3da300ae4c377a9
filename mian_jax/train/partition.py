"""The one module that knows about devices: mesh, shardings, jit with donation, host -> global arrays.

Data parallelism over every device of every process: by default a 1-D mesh with axis `data`; the batch
is split along it and the parameters and optimizer state are replicated (P()). `train.mesh` such as
`data=4,model=2` adds a `model` axis: every embedding table (and its optimizer slots) is then split by
rows over `model` (its rows padded to a multiple of the axis size), so a table larger than one device's
memory trains; the batch is split over every device of both axes, and XLA inserts the collectives of
the lookups and scatter updates. jit + NamedSharding replaces the old pmap / replicate pattern.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mian_jax.errors import ConfigError


def first_devices(n: int) -> list[jax.Device] | None:
  """The first `n` devices of this process (train.devices); None (every device) for 0. ValueError when there
  are fewer, or when the run has several processes (each would pick its own: give 0 there)."""
  if n == 0:
    return None
  if n < 0 or jax.process_count() > 1:
    raise ValueError(
      f"train.devices={n}: expected 0 (every device) or, in a one-process run, 1.."
      f"{jax.local_device_count()}"
      + (f" (this run has {jax.process_count()} processes: use 0)" if jax.process_count() > 1 else "")
    )
  if n > jax.local_device_count():
    raise ValueError(
      f"train.devices={n}, but this process has {jax.local_device_count()} devices; give at most "
      f"{jax.local_device_count()} (0 = every device)"
    )
  return jax.local_devices()[:n]


def make_mesh(devices: list[jax.Device] | None = None, spec: str = "") -> Mesh:
  """A mesh over `devices` (default: every device of every process): 1-D `data` when `spec` is "", else
  `data=N,model=M` with N x M = the number of devices. ValueError says what is wrong with `spec`."""
  devices = devices or jax.devices()
  if not spec:
    return Mesh(np.array(devices), ("data",))
  sizes: dict[str, int] = {}
  for part in spec.split(","):
    name, _, size = part.partition("=")
    if name.strip() not in ("data", "model") or not size.strip().isdigit() or int(size) < 1:
      raise ValueError(f"train.mesh={spec}: expected data=N,model=M (positive sizes), e.g. data=4,model=2")
    sizes[name.strip()] = int(size)
  data, model = sizes.get("data", 1), sizes.get("model", 1)
  if data * model != len(devices):
    raise ValueError(f"train.mesh={spec}: {data} x {model} = {data * model} devices, but there are {len(devices)}")
  return Mesh(np.array(devices).reshape(data, model), ("data", "model"))


def model_size(mesh: Mesh) -> int:
  """How many ways the tables are split (1 without a `model` axis)."""
  return dict(mesh.shape).get("model", 1)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(mesh.axis_names))


def state_shardings(shapes: Any, mesh: Mesh) -> Any:
  """A NamedSharding per leaf of a state (or of its shapes): leaves under a `tables` key (the tables and
  their optimizer slots) split by rows over `model` when the mesh has that axis; the rest replicated."""
  ways = model_size(mesh)

  def one(path, x):
    if ways > 1 and any(getattr(k, "key", None) == "tables" for k in path) and x.ndim and x.shape[0] % ways == 0:
      return NamedSharding(mesh, P("model", *([None] * (len(x.shape) - 1))))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, shapes)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def per_process_batch(global_batch: int, mesh: Mesh, key: str = "") -> int:
  """This process's share of the global batch; it must split evenly over processes and devices, else a
  ConfigError (a ValueError) naming `key`, the config field the batch came from."""
  n_dev = mesh.devices.size
  if global_batch % n_dev:
    what = f"{key}={global_batch}" if key else f"batch size {global_batch} (train.batch_size or train.eval_batch_size)"
    raise ConfigError(f"{what} does not split over {n_dev} devices; set it to a multiple of {n_dev}")
  return global_batch // jax.process_count()


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> one global jax.Array per field, sharded over the `data` axis."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def init_shardings(init_fn: Callable[[jax.Array], Any], mesh: Mesh) -> Any:
  """The state shardings of what `init_fn(key_data)` returns."""
  return state_shardings(jax.eval_shape(init_fn, jax.ShapeDtypeStruct((2,), np.uint32)), mesh)


def jit_init(init_fn: Callable[[jax.Array], Any], mesh: Mesh) -> Callable[[jax.Array], Any]:
  """jit the state initialiser so that the state is born placed: replicated, tables split over `model`."""
  return jax.jit(init_fn, out_shardings=init_shardings(init_fn, mesh))


def jit_train_step(step_fn: Callable, mesh: Mesh, shardings: Any = None) -> Callable:
  """(state, batch) -> (state, metrics): the state is donated, so its old buffers are reused.
  `shardings`: the state's (init_shardings); None = replicated, right for a mesh without `model`."""
  rep, data = replicated(mesh), batch_sharding(mesh)
  state = rep if shardings is None else shardings
  return jax.jit(step_fn, in_shardings=(state, data), out_shardings=(state, rep), donate_argnums=0)


def jit_eval_step(eval_fn: Callable, mesh: Mesh, shardings: Any = None) -> Callable:
  """(params, batch) -> probabilities; `shardings`: the params' (None = replicated)."""
  rep, data = replicated(mesh), batch_sharding(mesh)
  return jax.jit(eval_fn, in_shardings=(rep if shardings is None else shardings, data), out_shardings=data)


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def gather(tree: Any) -> Any:
  """Global arrays -> full numpy arrays on every process (each row once)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
