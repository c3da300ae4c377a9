"""Embedding tables (kept apart from the dense network) and the lookup into MIAN's four groups.

Tables are a plain dict {table name: float32 [V, D]} built from the schema, so that optimizers and
sharding can treat them separately from the dense parameters. Legend: B batch, T history length,
J user fields, K context fields, D = embed_dim, Di = item width (item fields x D).

- e_i  [B, Di]     concatenation of the candidate's item fields (item id, category, ...).
- e_b  [B, T, Di]  behaviour t: the behaviour fields aligned with the item fields, concatenated in the
                   same order (shared tables), plus the side behaviour fields (e.g. the age of the
                   behaviour) each embedded at width Di and added, like a position encoding.
- mask [B, T]      True at real behaviours (t < hist_len); e_b is exactly 0 elsewhere, whatever ids the
                   padded positions hold.
- e_u  [B, J, D], e_c [B, K, D]: one vector per field; a numeric field is value x a learned [D] vector.
- behaviour_ids [B, T]  the ids of the first aligned behaviour field (the behaviour's item id), for
                   models that compare behaviours (DIEN's negatives); 0 at padding.
- linear [B, F]    first-order weights, one per model input field (the sequence fields: masked mean over
                   the history), for models with a linear part (LR, Wide&Deep, DeepFM, xDeepFM). Their
                   width-1 tables `linear:<table>` exist only when `init_tables(..., linear=True)`;
                   otherwise F = 0.

How the rows are read (`Lookup`: train.embedding_lookup, train.one_hot_rows). The parameters, the
checkpoints and the outputs are the same every way; a gradient may differ in the order of its float sums.
- per field: one gather per field (`jnp.take`), whose gradient is one scatter-add per field;
- batched: the tables of one width concatenated, each field's ids moved by its table's row offset, and
  one gather over all those fields' ids: one gather and one gradient scatter per width and step instead
  of one per field (FBGEMM's table-batched embeddings). The tables stay separate parameters, concatenated
  in the step (a copy, small beside dense Adam's pass over every row and both moments each step), so
  the checkpoints, the row-sparse optimizers and the row sharding do not change. An id outside its table
  is moved past the end of the concatenation: it still reads NaN and its gradient is still dropped;
- one-hot: a table of at most `one_hot_rows` rows is read as one_hot(ids) @ table, whose gradient is a
  matmul instead of a scatter-add (on GPU the f32 scatter-add into a few rows that every sample hits
  is the slow case); exact, and NaN outside the table as a gather.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mian_jax.schema import FeatureSchema

INIT_STDDEV = 0.05
LOOKUPS = ("auto", "per_field", "batched")
# train.one_hot_rows = -1 takes the rule measured for the backend (benchmarks/embedding_lookup.py); a backend
# not named here (GPU / TPU until a GPU has measured it) reads every table with gathers.
ONE_HOT_ROWS = {"cpu": 0}


@dataclasses.dataclass(frozen=True)
class Lookup:
  """How `embed` reads the tables (module docstring)."""

  batched: bool = False  # one gather per table width (True) or per field
  one_hot_rows: int = 0  # tables of at most this many rows: one-hot matmuls


def resolve_lookup(kind: str, one_hot_rows: int, backend: str, tables_split: bool) -> Lookup:
  """train.embedding_lookup and train.one_hot_rows for a run: auto = batched on GPU / TPU unless the tables are
  split over a `model` axis (their concatenation would move every device's rows), per field on CPU (its
  gathers are cheap and the concatenation a copy); one_hot_rows -1 = ONE_HOT_ROWS of the backend."""
  batched = kind == "batched" or (kind == "auto" and backend != "cpu" and not tables_split)
  return Lookup(batched, ONE_HOT_ROWS.get(backend, 0) if one_hot_rows < 0 else one_hot_rows)


@flax.struct.dataclass
class Groups:
  item: jax.Array  # [B, Di]
  behaviour: jax.Array  # [B, T, Di]
  mask: jax.Array  # [B, T] bool
  user: jax.Array  # [B, J, D]
  context: jax.Array  # [B, K, D]
  behaviour_ids: jax.Array  # [B, T] int
  linear: jax.Array  # [B, F] (F = 0 without linear tables)


def table_shapes(
  schema: FeatureSchema, dim: int, linear: bool = False, row_multiple: int = 1
) -> dict[str, tuple[int, int]]:
  """{table: (rows, width)}; rows rounded up to a multiple of `row_multiple` (tables split over a
  `model` mesh axis need it; the extra rows are never looked up)."""
  item_width = dim * len(schema.group("item"))
  pad = lambda rows: -(-rows // row_multiple) * row_multiple
  shapes = {name: (pad(rows), dim) for name, rows in schema.tables.items()}
  for f in schema.side_behaviours():
    shapes[f.table_name] = (pad(schema.tables[f.table_name]), item_width)
  for f in schema.numeric:
    shapes[f"numeric:{f.name}"] = (pad(1), dim)
  if linear:
    shapes.update({f"linear:{name}": (pad(rows), 1) for name, rows in schema.tables.items()})
    shapes.update({f"linear:numeric:{f.name}": (pad(1), 1) for f in schema.numeric})
  return dict(sorted(shapes.items()))


SHARED_DRAW_ROWS = 65_536  # tables up to this many rows take their values from one shared random draw


def init_tables(
  rng: jax.Array, schema: FeatureSchema, dim: int, linear: bool = False, row_multiple: int = 1
) -> dict[str, jax.Array]:
  """Embeddings ~ N(0, INIT_STDDEV); first-order (linear:*) weights start at 0, as logistic regression does.

  The tables of up to SHARED_DRAW_ROWS rows are cut from one random draw: one random-number kernel for
  XLA to compile instead of one per table (the commercial schema's init compiled in 4.0 s -> 1.3 s on a
  loaded 2-core machine). Larger tables draw their own values, so that a table split over devices is drawn
  where it lives. A table's values depend on its unpadded rows only: rows added for `row_multiple` are 0
  (never looked up), so a run with tables split over a `model` axis starts from the one-device run's values."""
  shapes = table_shapes(schema, dim, linear)
  drawn = [n for n in shapes if not n.startswith("linear:")]
  shared = [n for n in drawn if shapes[n][0] <= SHARED_DRAW_ROWS]
  own = [n for n in drawn if n not in shared]
  keys = jax.random.split(rng, len(own) + 1)
  tables = {n: INIT_STDDEV * jax.random.normal(k, shapes[n], jnp.float32) for k, n in zip(keys[1:], own)}
  sizes = [shapes[n][0] * shapes[n][1] for n in shared]
  flat = INIT_STDDEV * jax.random.normal(keys[0], (sum(sizes),), jnp.float32)
  tables.update({n: part.reshape(shapes[n]) for n, part in zip(shared, jnp.split(flat, np.cumsum(sizes)[:-1]))})
  pad = lambda rows: -(-rows // row_multiple) * row_multiple
  zeros = lambda rows, width: jnp.zeros((rows, width), jnp.float32)
  return {
    n: zeros(pad(r), w)
    if n not in tables
    else tables[n]
    if pad(r) == r
    else jnp.concatenate([tables[n], zeros(pad(r) - r, w)])
    for n, (r, w) in shapes.items()
  }


def _in_table(ids: jax.Array, rows: int) -> tuple[jax.Array, jax.Array]:
  """(ids with negatives counted from the end, as jnp.take counts them; whether each is inside the table)."""
  ids = jnp.where(ids < 0, ids + rows, ids)
  return ids, (ids >= 0) & (ids < rows)


def _one_hot(table: jax.Array, ids: jax.Array) -> jax.Array:
  """table[ids] as one_hot(ids) @ table, NaN outside the table as jnp.take reads it; exact in float32
  (HIGHEST precision: no TF32 rounding on GPU, forward or backward)."""
  ids, inside = _in_table(ids, table.shape[0])
  hot = jax.nn.one_hot(ids, table.shape[0], dtype=table.dtype)
  out = jnp.einsum("...v,vd->...d", hot, table, precision=jax.lax.Precision.HIGHEST)
  return jnp.where(inside[..., None], out, jnp.nan)


def _lookups(
  tables: Mapping[str, jax.Array],
  schema: FeatureSchema,
  batch: Mapping[str, jax.Array],
  keys: list[tuple[str, str]],
  lookup: Lookup,
) -> dict[tuple[str, str], jax.Array]:
  """{(prefix, field): its rows [..., width]} for the (table prefix, field) pairs `keys` of embedded
  (categorical / sequence) fields, read as `lookup` says (module docstring)."""
  out: dict[tuple[str, str], jax.Array] = {}
  by_width: dict[tuple[int, str], list[tuple[str, str]]] = {}
  for key in keys:
    prefix, name = key
    table = tables[prefix + schema[name].table_name]
    if table.shape[0] <= lookup.one_hot_rows:
      out[key] = _one_hot(table, batch[name])
    elif lookup.batched:
      by_width.setdefault((table.shape[1], str(table.dtype)), []).append(key)
    else:
      out[key] = jnp.take(table, batch[name], axis=0)
  for group in by_width.values():
    names = list(dict.fromkeys(prefix + schema[name].table_name for prefix, name in group))
    sizes = [tables[n].shape[0] for n in names]
    offset = dict(zip(names, np.cumsum([0] + sizes[:-1]).tolist()))
    total = sum(sizes)
    fused = jnp.concatenate([tables[n] for n in names]) if len(names) > 1 else tables[names[0]]
    flat = []
    for prefix, name in group:
      t = prefix + schema[name].table_name
      ids, inside = _in_table(batch[name].reshape(-1), tables[t].shape[0])
      flat.append(jnp.where(inside, ids + offset[t], total))  # outside its table: past the end, read as NaN
    rows = jnp.take(fused, jnp.concatenate(flat), axis=0)
    starts = np.cumsum([0] + [batch[name].size for _, name in group]).tolist()
    for (prefix, name), lo, hi in zip(group, starts[:-1], starts[1:]):
      out[(prefix, name)] = rows[lo:hi].reshape(batch[name].shape + rows.shape[1:])
  return out


def _input_fields(schema: FeatureSchema) -> list:
  """Every model input field, group by group (the order of `linear`'s columns)."""
  return [f for group in ("item", "behaviour", "user", "context") for f in schema.group(group)]


def embed(
  tables: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], schema: FeatureSchema, lookup: Lookup = Lookup()
) -> Groups:
  linear_tables = any(k.startswith("linear:") for k in tables)
  used = [f.name for g in ("item", "user", "context") for f in schema.group(g)]
  used += [b.name for _, b in schema.aligned_behaviours()] + [f.name for f in schema.side_behaviours()]
  keys = [("", n) for n in dict.fromkeys(used)]
  if linear_tables:
    keys += [("linear:", f.name) for f in _input_fields(schema)]
  looked = _lookups(tables, schema, batch, [k for k in keys if schema[k[1]].kind != "numeric"], lookup)

  def field(name: str, prefix: str = "") -> jax.Array:
    if schema[name].kind == "numeric":
      return batch[name][:, None] * tables[f"{prefix}numeric:{name}"][0]  # [B, D]
    return looked[(prefix, name)]

  item = jnp.concatenate([field(f.name) for f in schema.group("item")], axis=-1)
  beh = jnp.concatenate([field(b.name) for _, b in schema.aligned_behaviours()], axis=-1)
  for f in schema.side_behaviours():
    beh = beh + field(f.name)
  t = beh.shape[1]
  mask = jnp.arange(t)[None, :] < batch["hist_len"][:, None]
  # Padding is zeroed with a select, not multiplied by the mask: an id past the end of its table (e.g.
  # padding written as the vocabulary size) is looked up as NaN, and NaN x 0 = NaN would leak into every
  # model's output; with the select whatever the padded positions hold never reaches the result or the
  # gradient (the select sends them a zero gradient, and a lookup past the end drops its scatter).
  beh = jnp.where(mask[..., None], beh, 0.0)

  def stack(group: str) -> jax.Array:
    fields = [field(f.name) for f in schema.group(group)]
    if not fields:
      return jnp.zeros(item.shape[:1] + (0, tables[schema.group("item")[0].table_name].shape[1]), item.dtype)
    return jnp.stack(fields, axis=1)

  def first_order() -> jax.Array:
    """First-order weight per input field [B, F]; a sequence field's is its masked mean over the history."""
    cols = []
    for f in _input_fields(schema):
      w = field(f.name, prefix="linear:")[..., 0]
      if f.kind == "sequence":  # where, not a product (above): an empty history gives 0
        w = jnp.where(mask, w, 0.0).sum(1) / jnp.maximum(mask.sum(1), 1)
      cols.append(w)
    return jnp.stack(cols, axis=1)

  first_behaviour = schema.aligned_behaviours()[0][1].name
  return Groups(
    item=item,
    behaviour=beh,
    mask=mask,
    user=stack("user"),
    context=stack("context"),
    behaviour_ids=jnp.where(mask, batch[first_behaviour], 0),
    linear=first_order() if linear_tables else jnp.zeros(item.shape[:1] + (0,), item.dtype),
  )


def unique_rows(
  tables: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], schema: FeatureSchema
) -> tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]:
  """(ids, rows, local batch): the rows of every table the batch touches, for row-sparse training.

  ids[k]   [N_k] the ids of table k the batch touches, each once, padded with the out-of-range id V_k:
           a table with more rows than the batch holds ids gets a sorted unique of capacity N_k = how
           many ids its features hold; a smaller table gets N_k = V_k slots, slot v holding v when row
           v is touched (no sort: a scatter of flags);
  rows[k]  [N_k, width] those rows (zeros at padding): differentiate with respect to these;
  local    the batch with every id replaced by its position in ids[k], so that
           `embed(rows, local, schema)` equals `embed(tables, batch, schema)`.
  A first-order table `linear:<t>` shares the ids of table t; a numeric field's [1, D] vector is row 0.
  """
  by_table: dict[str, list[str]] = {}
  for f in schema.features:
    if f.kind != "numeric" and f.embed:
      by_table.setdefault(f.table_name, []).append(f.name)
  local = dict(batch)
  uniq: dict[str, jax.Array] = {}
  for t, names in by_table.items():
    flat = jnp.concatenate([batch[n].reshape(-1) for n in names])
    rows_t = tables[t].shape[0]
    if rows_t <= flat.size:  # small table: every row has a slot; untouched slots hold the padding id
      touched = jnp.zeros((rows_t,), bool).at[flat].set(True)
      uniq[t] = jnp.where(touched, jnp.arange(rows_t, dtype=jnp.int32), rows_t)
      continue  # local ids = the ids themselves
    u, inverse = jnp.unique(flat, size=flat.size, fill_value=rows_t, return_inverse=True)
    uniq[t] = u.astype(jnp.int32)
    offset = 0
    for n in names:
      size = batch[n].size
      local[n] = inverse.reshape(-1)[offset : offset + size].reshape(batch[n].shape).astype(jnp.int32)
      offset += size
  ids, rows = {}, {}
  for k, table in tables.items():
    base = k.removeprefix("linear:")
    ids[k] = jnp.zeros((1,), jnp.int32) if base.startswith("numeric:") else uniq[base]
    rows[k] = jnp.take(table, ids[k], axis=0, mode="fill", fill_value=0)
  return ids, rows, local
