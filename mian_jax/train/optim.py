"""Optimizers: optax for the dense network; for the embedding tables dense Adam or row-sparse updates.

`train.embedding_optimizer`:
  adam       the reference: one optax Adam over every parameter; the tables' gradient is dense (the
             size of the table) and every row and moment is rewritten every step.
  lazy_adam  Adam moments and update only for the rows the batch touches (TensorFlow's LazyAdam):
             m_r <- b1 m_r + (1-b1) g_r, v_r <- b2 v_r + (1-b2) g_r^2, bias-corrected with the global
             step, w_r <- w_r - lr m^_r / (sqrt(v^_r) + eps). A row touched every step follows dense
             Adam; an untouched row and its moments stay bit-identical.
  adagrad    row-wise Adagrad (one accumulator per row, the mean of g_r^2 over the row, starting at
             ADAGRAD_INIT): w_r <- w_r - lr g_r / sqrt(acc_r).
  sgd        w_r <- w_r - lr g_r (equal to dense SGD: untouched rows have zero gradient).
The row gradients come from `step.py`, which differentiates with respect to the looked-up unique rows
of each table (a fixed-capacity unique per batch, so shapes stay static); ids are padded with the
out-of-range id V, whose gathers read zeros and whose scatters are dropped.
The dense network always uses optax Adam (AdamW when train.weight_decay > 0), with the same learning
rate schedule as the tables.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mian_jax.config import TrainConfig

ADAGRAD_INIT = 0.1
SPARSE = ("lazy_adam", "adagrad", "sgd")


def schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
  if cfg.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(cfg.learning_rate, max(1, total_steps))
  return optax.constant_schedule(cfg.learning_rate)


def _take(x: jax.Array, ids: jax.Array) -> jax.Array:
  return jnp.take(x, ids, axis=0, mode="fill", fill_value=0)


@dataclasses.dataclass(frozen=True)
class RowOptimizer:
  """A row-sparse optimizer over a dict of tables: update(tables, state, ids, row_grads, lr, count)."""

  kind: str
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def init(self, tables: dict[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
    if self.kind == "lazy_adam":
      return {k: {"m": jnp.zeros_like(t), "v": jnp.zeros_like(t)} for k, t in tables.items()}
    if self.kind == "adagrad":
      return {k: {"acc": jnp.full(t.shape[:1], ADAGRAD_INIT, t.dtype)} for k, t in tables.items()}
    return {k: {} for k in tables}

  def update(
    self,
    tables: dict[str, jax.Array],
    state: dict[str, dict[str, jax.Array]],
    ids: dict[str, jax.Array],
    grads: dict[str, jax.Array],
    lr: jax.Array,
    count: jax.Array,
  ):
    """New (tables, state): rows `ids[k]` (unique; padding = out of range) of table k get `grads[k]`."""
    new_tables, new_state = {}, {}
    for k, table in tables.items():
      i, g, s = ids[k], grads[k].astype(table.dtype), state[k]
      if self.kind == "sgd":
        new_tables[k], new_state[k] = table.at[i].add(-lr * g, mode="drop"), s
      elif self.kind == "adagrad":
        acc = _take(s["acc"], i) + jnp.mean(g * g, axis=-1)
        step = lr * g / jnp.sqrt(acc)[:, None]
        new_tables[k] = table.at[i].add(-step, mode="drop")
        new_state[k] = {"acc": s["acc"].at[i].set(acc, mode="drop")}
      else:
        t = (count + 1).astype(table.dtype)
        m = self.b1 * _take(s["m"], i) + (1 - self.b1) * g
        v = self.b2 * _take(s["v"], i) + (1 - self.b2) * g * g
        m_hat, v_hat = m / (1 - self.b1**t), v / (1 - self.b2**t)
        new_tables[k] = table.at[i].add(-lr * m_hat / (jnp.sqrt(v_hat) + self.eps), mode="drop")
        new_state[k] = {"m": s["m"].at[i].set(m, mode="drop"), "v": s["v"].at[i].set(v, mode="drop")}
    return new_tables, new_state


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """`dense` (optax) updates the dense network, and the tables too when `rows` is None (dense Adam)."""

  dense: optax.GradientTransformation
  rows: RowOptimizer | None
  lr: optax.Schedule

  def init(self, params: dict[str, Any]) -> Any:
    if self.rows is None:
      return self.dense.init(params)
    return {
      "dense": self.dense.init(params["dense"]),
      "tables": self.rows.init(params["tables"]),
      "count": jnp.zeros((), jnp.int32),
    }


def make_optimizer(cfg: TrainConfig, total_steps: int) -> Optimizer:
  lr = schedule(cfg, total_steps)
  sparse = cfg.embedding_optimizer in SPARSE
  if cfg.weight_decay and not sparse:  # decay the dense network only, never the tables
    mask = lambda params: {
      "tables": jax.tree.map(lambda _: False, params["tables"]),
      "dense": jax.tree.map(lambda _: True, params["dense"]),
    }
    dense = optax.adamw(lr, weight_decay=cfg.weight_decay, mask=mask)
  elif cfg.weight_decay:
    dense = optax.adamw(lr, weight_decay=cfg.weight_decay)
  else:
    dense = optax.adam(lr)
  return Optimizer(dense, RowOptimizer(cfg.embedding_optimizer) if sparse else None, lr)
