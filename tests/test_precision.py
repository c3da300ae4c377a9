"""train.compute_dtype=bfloat16: the pass runs in bf16 (close to float32), parameters and optimizer
state stay float32, the loss and attention weights are float32."""

import jax
import jax.numpy as jnp
import numpy as np

from mian_jax import models
from mian_jax.config import ModelConfig, TrainConfig
from mian_jax.train import optim, state as state_lib, step as step_lib
from test_sparse_tables import SCHEMA, batch


def test_bfloat16_pass_is_close_to_float32_and_keeps_float32_state():
  model = models.get("mian", ModelConfig(embed_dim=8, mlp=(16,), gim_dim=8, ibim_heads=2))
  opt = optim.make_optimizer(TrainConfig(learning_rate=1e-2), 10)
  state = jax.jit(state_lib.make_init(model, SCHEMA, 8, opt))(jax.random.key_data(jax.random.key(0)))
  b = batch(np.random.default_rng(0), rows=64)
  seen = {}

  def run(dtype):
    logit, extras = step_lib.forward(model, SCHEMA, state.params, b, False, None, dtype)
    seen[dtype] = {k: v.dtype for k, v in extras.items()}
    return logit

  f32, bf16 = jax.jit(lambda: run("float32"))(), jax.jit(lambda: run("bfloat16"))()
  assert f32.dtype == bf16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(bf16), np.asarray(f32), atol=0.05)
  assert float(jnp.abs(bf16 - f32).max()) > 0  # the pass really ran in bf16
  assert all(d == jnp.float32 for d in seen["bfloat16"].values()), seen  # attention weights (softmax) in f32
  step = jax.jit(step_lib.make_train_step(model, SCHEMA, opt, compute_dtype="bfloat16"))
  for _ in range(3):
    state, metrics = step(state, b)
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
  assert {
    x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)
  } == {jnp.dtype(jnp.float32)}
