"""Loss and the train / eval steps as pure functions (jit, shardings and donation: partition.py).

Batches are dicts of arrays (see data/records.py); `weight` is 0 on padding rows, which therefore
count neither in the loss nor in the metrics.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mian_jax.layers import embedding
from mian_jax.schema import FeatureSchema
from mian_jax.train.optim import Optimizer
from mian_jax.train import state as state_lib
from mian_jax.train.state import TrainState


def forward(
  model: nn.Module,
  schema: FeatureSchema,
  params: dict[str, Any],
  batch: dict[str, jax.Array],
  train: bool,
  rng: jax.Array | None = None,
  compute_dtype: str = "float32",
  lookup: embedding.Lookup = embedding.Lookup(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(logit [B], extras) for a batch; extras may hold an `aux_loss` (DIEN) and attention weights, and in
  training, for models with running statistics (params['batch_stats']), their updated values under
  `batch_stats`. With compute_dtype bfloat16 the embeddings and the dense parameters are cast to bf16 for the pass
  (the casts are differentiated, so the gradients reach the float32 parameters). `lookup`: how the tables
  are read (embedding.Lookup)."""
  groups = embedding.embed(params["tables"], batch, schema, lookup)
  dense = params["dense"]
  if compute_dtype != "float32":
    dtype = jnp.dtype(compute_dtype)
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    groups, dense = jax.tree.map(cast, groups), jax.tree.map(cast, dense)
  rngs = {"dropout": rng, "negatives": jax.random.fold_in(rng, 1)} if rng is not None else {}
  variables = {"params": dense}
  if "batch_stats" in params:
    variables["batch_stats"] = params["batch_stats"]
  if train and "batch_stats" in params:
    (logit, extras), updated = model.apply(variables, groups, train, rngs=rngs, mutable=["batch_stats"])
    extras = {**extras, "batch_stats": updated["batch_stats"]}
  else:
    logit, extras = model.apply(variables, groups, train, rngs=rngs)
  return logit.astype(jnp.float32), extras


def weighted_bce(logit: jax.Array, label: jax.Array, weight: jax.Array) -> jax.Array:
  """Binary cross-entropy averaged over real rows (the paper's 2-way softmax loss is the same)."""
  losses = optax.sigmoid_binary_cross_entropy(logit, label)
  return jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def make_train_step(
  model: nn.Module,
  schema: FeatureSchema,
  opt: Optimizer,
  aux_weight: float = 1.0,
  compute_dtype: str = "float32",
  lookup: embedding.Lookup = embedding.Lookup(),
) -> Callable:
  """(state, batch) -> (state, {loss, grad_norm, finite}). With a row-sparse table optimizer (`opt.rows`) the
  loss is differentiated with respect to the unique rows the batch looks up, and only those rows (and
  their optimizer slots) are written; otherwise one optax update covers every parameter."""

  def with_stats(params, stats):
    """`params` with the running statistics the step wrote (none for models without them)."""
    return params if stats is None else {**params, "batch_stats": stats}

  def loss_of(trained, stats, batch, rng):
    """(loss, the running statistics the model wrote, or None) for the trainable params `trained`."""
    logit, extras = forward(model, schema, with_stats(trained, stats), batch, True, rng, compute_dtype, lookup)
    loss = weighted_bce(logit, batch["label"], batch["weight"])
    if "aux_loss" in extras:  # e.g. DIEN's interest-extractor loss, weighted by model.aux_loss_weight
      loss = loss + aux_weight * extras["aux_loss"].astype(jnp.float32)
    return loss, extras.get("batch_stats")

  def finite_of(loss, grad_norm):
    return jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def keep_if(finite, new, old):
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

  def dense_step(state: TrainState, batch, rng):
    trained, stats = state_lib.trainable(state.params), state.params.get("batch_stats")
    (loss, new_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(trained, stats, batch, rng)
    norm = optax.global_norm(grads)
    finite = finite_of(loss, norm)
    updates, opt_state = opt.dense.update(grads, state.opt_state, trained)
    params = with_stats(optax.apply_updates(trained, updates), new_stats)  # the select fuses into the update
    return keep_if(finite, params, state.params), keep_if(finite, opt_state, state.opt_state), loss, norm, finite

  def sparse_step(state: TrainState, batch, rng):
    ids, rows, local = embedding.unique_rows(state.params["tables"], batch, schema)
    dense, stats = state.params["dense"], state.params.get("batch_stats")
    (loss, new_stats), (g_dense, g_rows) = jax.value_and_grad(
      lambda d, r: loss_of({"tables": r, "dense": d}, stats, local, rng), argnums=(0, 1), has_aux=True
    )(dense, rows)
    norm = optax.global_norm((g_dense, g_rows))
    finite = finite_of(loss, norm)
    updates, dense_state = opt.dense.update(g_dense, state.opt_state["dense"], dense)
    count = state.opt_state["count"]
    # Not finite: every row id becomes the out-of-range padding id, so every scatter is dropped and
    # the tables and their slots stay exactly as they were (no pass over the whole tables).
    ids = {k: jnp.where(finite, i, state.params["tables"][k].shape[0]) for k, i in ids.items()}
    tables, table_state = opt.rows.update(
      state.params["tables"], state.opt_state["tables"], ids, g_rows, opt.lr(count), count
    )
    params = {"tables": tables, "dense": keep_if(finite, optax.apply_updates(dense, updates), dense)}
    if stats is not None:
      params["batch_stats"] = keep_if(finite, new_stats, stats)
    opt_state = {
      "dense": keep_if(finite, dense_state, state.opt_state["dense"]),
      "tables": table_state,
      "count": jnp.where(finite, count + 1, count),
    }
    return params, opt_state, loss, norm, finite

  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(state.rng, state.step)
    # A non-finite loss or gradient leaves the parameters and optimizer state as they were (the step
    # counter still moves on, so the data and the RNG stay aligned); the loop stops or counts it
    # (train.on_nonfinite), and no checkpoint ever holds a non-finite update.
    params, opt_state, loss, grad_norm, finite = (dense_step if opt.rows is None else sparse_step)(state, batch, rng)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}

  return train_step


def make_eval_step(
  model: nn.Module, schema: FeatureSchema, compute_dtype: str = "float32", lookup: embedding.Lookup = embedding.Lookup()
) -> Callable:
  def eval_step(params: dict[str, Any], batch: dict[str, jax.Array]) -> jax.Array:
    return jax.nn.sigmoid(forward(model, schema, params, batch, False, None, compute_dtype, lookup)[0])

  return eval_step
