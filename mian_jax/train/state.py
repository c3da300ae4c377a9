"""Training state, built from shapes: params = {'tables': embedding tables, 'dense': the network} and,
for models with running statistics (Dice's moments in DIN / DIEN), 'batch_stats': the model's
`batch_stats` collection. Those are not trained by the optimizer: each training step replaces them with
the values the model wrote (see step.py); evaluation, prediction and export read them.

The step lives in the state and the per-step RNG is folded from it, so a resumed run draws the same
random numbers as an uninterrupted one without extra bookkeeping.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mian_jax.layers import embedding
from mian_jax.schema import FeatureSchema


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []
  params: dict[str, Any]  # {'tables': {name: [V, D]}, 'dense': flax params[, 'batch_stats': running statistics]}
  opt_state: Any
  rng: jax.Array  # uint32 [2]: the run's base key; step keys are fold_in(rng, step)


def dummy_batch(schema: FeatureSchema, rows: int = 2) -> dict[str, np.ndarray]:
  batch: dict[str, np.ndarray] = {
    "label": np.zeros(rows, np.float32),
    "weight": np.ones(rows, np.float32),
    "hist_len": np.ones(rows, np.int32),
  }
  for f in schema.features:
    if f.kind == "sequence":
      batch[f.name] = np.zeros((rows, schema.max_len), np.int32)
    else:
      batch[f.name] = np.zeros(rows, np.float32 if f.kind == "numeric" else np.int32)
  return batch


def make_init(model: nn.Module, schema: FeatureSchema, embed_dim: int, tx, row_multiple: int = 1):
  """Returns init(seed_key) -> TrainState; pure, so it can be jitted with output shardings. `tx` is an
  optim.Optimizer (or any object with init(params)); table rows are padded to `row_multiple`."""

  def init(key: jax.Array) -> TrainState:
    k_tables, k_dense, k_run = jax.random.split(key, 3)
    tables = embedding.init_tables(
      k_tables, schema, embed_dim, linear=getattr(model, "linear_terms", False), row_multiple=row_multiple
    )
    groups = embedding.embed(tables, dummy_batch(schema), schema)
    variables = model.init({"params": k_dense}, groups, False)
    params = {"tables": tables, "dense": variables["params"]}
    if variables.get("batch_stats"):
      params["batch_stats"] = variables["batch_stats"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable(params)), rng=k_run)

  return init


def trainable(params: dict[str, Any]) -> dict[str, Any]:
  """The parameters the optimizer updates: the tables and the dense network (not running statistics)."""
  return {"tables": params["tables"], "dense": params["dense"]}


def num_params(params: dict[str, Any]) -> dict[str, int]:
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  return {"tables": count(params["tables"]), "dense": count(params["dense"])}
