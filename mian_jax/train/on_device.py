"""Splits held on the devices (data.placement=device): their placement, the batch gathered inside jit, the
devices' free memory.

`place` puts one copy of a process's columns (`data/resident.Held`) on every device of the process: leaves
[devices, N or V], a leading axis over the mesh sharded like the batch. `gather` is the host decode as a
jitted function: per device (shard_map), rows -> the batch the host path would have made of them, to the bit
(`tests/test_resident.py`): ids and numbers widened to int32 / float32, histories right-padded to T with the
most recent T behaviours, `weight` 1 (0 and an all-zero row where `valid` is False: the padding rows of the
last evaluation batch).
"""

from __future__ import annotations

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mian_jax.data import records
from mian_jax.data.resident import Held
from mian_jax.errors import DataError
from mian_jax.schema import FeatureSchema

DEVICE_SHARE = 0.5  # data.placement=auto: device when the held splits take at most this share of a device's free memory


def free_bytes(mesh: Mesh) -> tuple[int, int]:
  """(the least free memory of this process's devices of `mesh`, how many copies share it): an accelerator's
  own (bytes_limit - bytes_in_use, each device one copy); on the CPU backend the host's available memory, which
  every CPU device's copy takes from."""
  local = local_devices(mesh)
  stats = [d.memory_stats() for d in local]
  if all(s and "bytes_limit" in s for s in stats):
    return min(int(s["bytes_limit"]) - int(s.get("bytes_in_use", 0)) for s in stats), 1
  available = None
  with contextlib.suppress(OSError):  # no /proc (not Linux): the pages the system says are free
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          available = int(line.split()[1]) * 1024
  if available is None:
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
  return available, len(local)


def local_devices(mesh: Mesh) -> list[jax.Device]:
  return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def store_sharding(mesh: Mesh) -> NamedSharding:
  """A store leaf [devices, ...]: one slice per device, in the batch's device order."""
  return NamedSharding(mesh, P(mesh.axis_names))


def place(held: Held, mesh: Mesh) -> dict[str, jax.Array]:
  """One copy of `held`'s columns on every device of this process: leaves [devices, N or V] (padded to
  the largest process's sizes, and to at least 1), sharded by `store_sharding`. An allocation that fails
  is a DataError with the sizes and the way out."""
  sizes = np.array([len(v) for v in held.columns.values()], np.int64)
  if jax.process_count() > 1:
    sizes = np.asarray(multihost_utils.process_allgather(sizes)).reshape(jax.process_count(), -1).max(axis=0)
  sharding, local = store_sharding(mesh), local_devices(mesh)
  out = {}
  try:
    for (name, column), size in zip(held.columns.items(), sizes.tolist()):
      if len(column) == max(1, size):  # a view: no host copy
        padded = column[None]
      else:
        padded = np.zeros((1, max(1, size)), column.dtype)
        padded[0, : len(column)] = column
      shards = [jax.device_put(padded, d) for d in local]
      out[name] = jax.make_array_from_single_device_arrays((mesh.devices.size, padded.shape[1]), sharding, shards)
  except Exception as e:
    if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
      raise
    raise DataError(
      f"the {held.split} split ({held.nbytes() / 2**20:,.1f} MiB a device) does not fit in device "
      f"memory ({_first_line(e)}); set data.placement=host"
    ) from None
  return out


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:200] if text else type(e).__name__


def gather(
  schema: FeatureSchema,
  max_len: int,
  mesh: Mesh,
  store: dict[str, jax.Array],
  rows: jax.Array,
  valid: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """The batch of `rows` ([B] int32, sharded like a batch: each device's rows index its process's store),
  as the host path decodes it; `valid` [B] bool (None = every row): False rows are all zero with weight 0.
  To be called inside jit."""
  scalars, sequences, _, _, _ = records._layout(schema)
  t = max_len
  spec = P(mesh.axis_names)

  def local(store, rows, *valid):
    s = {k: v[0] for k, v in store.items()}
    ok = valid[0] if valid else None
    rows = rows if ok is None else jnp.where(ok, rows, 0)
    zero = (lambda x: x) if ok is None else (lambda x: jnp.where(ok.reshape(ok.shape + (1,) * (x.ndim - 1)), x, 0))
    out = {"label": zero(s["label"][rows].astype(jnp.float32))}
    for name, _, decoded in scalars:
      out[name] = zero(s[name][rows].astype(decoded))
    length = s["hist_len"][rows].astype(jnp.int32)
    keep = jnp.minimum(length, t)
    first = s["start"][rows] + length - keep  # the most recent `keep` behaviours
    pos = jnp.arange(t, dtype=jnp.int32)[None, :]
    inside = pos < keep[:, None]
    index = jnp.where(inside, first[:, None] + pos, 0)
    for name, _ in sequences:
      out[name] = zero(jnp.where(inside, s[name][index].astype(jnp.int32), 0))
    out["hist_len"] = zero(keep)
    out["weight"] = jnp.ones(rows.shape, jnp.float32) if ok is None else ok.astype(jnp.float32)
    return out

  args = (store, rows) + (() if valid is None else (valid,))
  specs = (spec, spec) + (() if valid is None else (spec,))
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=False)(*args)
