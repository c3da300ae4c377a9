"""How to read the embedding tables (train.embedding_lookup, train.one_hot_rows), measured: the lookup of
every field of the commercial schema (history 50, embedding 18, first-order tables too) forward and backward
(the tables' gradient, as dense Adam takes it), per field against batched, with and without one-hot matmuls
for the tables of at most 64 rows; then one table alone, gather + scatter-add against one-hot matmul, by
its rows: the rule for ONE_HOT_ROWS (layers/embedding.py) is the largest size at which one-hot still wins.

    python -m benchmarks.embedding_lookup [--batch 1024] [--repeats 30]

On a GPU, run it with and without the XLA flag that gives the f32 scatter-add its native atomic
(benchmarks/accelerator.sh does both in its `scatter` phase; mian_jax/xla_env.py).
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import batch, jax, jnp, np, report, schema

from mian_jax.layers import embedding
from mian_jax.layers.embedding import Lookup

SIZES = (8, 41, 128, 512, 2048)  # one-hot of 8,192 rows at batch 8192 x 50 ids: a 13 GB matrix
WAYS = {
  "per_field": Lookup(),
  "per_field+one_hot64": Lookup(one_hot_rows=64),
  "batched": Lookup(batched=True),
  "batched+one_hot64": Lookup(batched=True, one_hot_rows=64),
}


def median_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1e3 * float(np.median(times))


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--repeats", type=int, default=30)
  args = p.parse_args(argv)
  s = schema()
  tables = embedding.init_tables(jax.random.key(0), s, 18, linear=True)
  b = {k: jnp.asarray(v) for k, v in batch(s, args.batch, lengths="commercial").items()}
  rows = []
  for way, lookup in WAYS.items():

    def loss(t, lookup=lookup):
      g = embedding.embed(t, b, s, lookup)
      return sum(jnp.sum(x * x) for x in (g.item, g.behaviour, g.user, g.context, g.linear))

    step = jax.jit(jax.grad(loss))
    rows.append({"what": f"all fields: {way}", "ms": median_ms(step, tables, repeats=args.repeats)})
  base = rows[0]["ms"]
  for r in rows:
    r["vs_per_field"] = base / r["ms"]
  rng = np.random.default_rng(0)
  for v in SIZES:
    table = jnp.asarray(rng.normal(size=(v, 18)).astype(np.float32))
    ids_v = jnp.asarray(rng.integers(0, v, (args.batch, 50)).astype(np.int32))
    pair = {}
    for way, lookup in (("gather", Lookup()), ("one_hot", Lookup(one_hot_rows=v))):
      grad = jax.jit(jax.grad(lambda t, i, lookup=lookup: jnp.sum(_one(t, i, lookup) ** 2)))
      pair[way] = median_ms(grad, table, ids_v, repeats=args.repeats)
    rows.append(
      {"what": f"one table of {v} rows: gather vs one-hot", "ms": pair["gather"], "one_hot_ms": pair["one_hot"]}
    )
    rows[-1]["vs_per_field"] = pair["gather"] / pair["one_hot"]
  report(
    "embedding_lookup",
    rows,
    ["what", "ms", "one_hot_ms", "vs_per_field"],
    {"batch": args.batch, "device": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", "")},
  )
  print("vs_per_field: per-field ms / this way's ms (above 1: faster); one table: gather ms / one-hot ms")


def _one(table, ids, lookup):
  """table[ids] read as `lookup` reads a table of its size (embedding._one_hot or a gather)."""
  if table.shape[0] <= lookup.one_hot_rows:
    return embedding._one_hot(table, ids)
  return jnp.take(table, ids, axis=0)


if __name__ == "__main__":
  main()
