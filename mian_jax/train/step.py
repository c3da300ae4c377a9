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
from mian_jax.train.state import TrainState


def forward(model: nn.Module, schema: FeatureSchema, params: dict[str, Any], batch: dict[str, jax.Array],
            train: bool, rng: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(logit [B], extras) for a batch; extras may hold an `aux_loss` (DIEN) and attention weights."""
  groups = embedding.embed(params["tables"], batch, schema)
  rngs = {"dropout": rng, "negatives": jax.random.fold_in(rng, 1)} if rng is not None else {}
  logit, extras = model.apply({"params": params["dense"]}, groups, train, rngs=rngs)
  return logit.astype(jnp.float32), extras


def weighted_bce(logit: jax.Array, label: jax.Array, weight: jax.Array) -> jax.Array:
  """Binary cross-entropy averaged over real rows (the paper's 2-way softmax loss is the same)."""
  losses = optax.sigmoid_binary_cross_entropy(logit, label)
  return jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def make_train_step(model: nn.Module, schema: FeatureSchema, tx: optax.GradientTransformation,
                    aux_weight: float = 1.0) -> Callable:
  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      logit, extras = forward(model, schema, params, batch, True, rng)
      loss = weighted_bce(logit, batch["label"], batch["weight"])
      if "aux_loss" in extras:  # e.g. DIEN's interest-extractor loss, weighted by model.aux_loss_weight
        loss = loss + aux_weight * extras["aux_loss"].astype(jnp.float32)
      return loss

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {"loss": loss, "grad_norm": grad_norm}

  return train_step


def make_eval_step(model: nn.Module, schema: FeatureSchema) -> Callable:
  def eval_step(params: dict[str, Any], batch: dict[str, jax.Array]) -> jax.Array:
    return jax.nn.sigmoid(forward(model, schema, params, batch, False)[0])

  return eval_step
