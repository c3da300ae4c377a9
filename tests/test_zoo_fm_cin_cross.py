"""The zoo's FM / CIN / cross layers against their definitions, and the five baselines on tiny Groups."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mian_jax import models
from mian_jax.config import ModelConfig
from mian_jax.layers.cin import CIN
from mian_jax.layers.cross import CrossLayer, CrossNet
from mian_jax.layers.embedding import Groups
from mian_jax.layers.fm import fm_second_order

B, T, D, N_ITEM, J, K = 3, 5, 4, 2, 2, 3
F = 2 * N_ITEM + J + K


def _rand(key, *shape):
  return jax.random.normal(jax.random.key(key), shape)


def test_fm_second_order_equals_pairwise_sum():
  v = np.asarray(_rand(0, B, 5, D), np.float64)
  expected = [sum(v[b, i] @ v[b, j] for i, j in itertools.combinations(range(5), 2)) for b in range(B)]
  np.testing.assert_allclose(fm_second_order(jnp.asarray(v, jnp.float32)), expected, rtol=1e-5, atol=1e-5)


def test_cin_layers_equal_loop_definition_and_pool_over_d():
  """Two layers (4 then 2 maps) over M = 3 fields: layer 2 reads H_1 = 4 != M maps, which pins W's axes."""
  x0 = _rand(1, B, 3, D)
  cin = CIN((4, 2))
  params = cin.init(jax.random.key(2), x0)["params"]
  out = np.asarray(cin.apply({"params": params}, x0))
  x = np.asarray(x0, np.float64)
  xk, pooled = x, []
  for k, w in enumerate([np.asarray(params["w0"]), np.asarray(params["w1"])]):  # w [H_k, H_{k-1}, M]
    assert w.shape == ((4, 3, 3), (2, 4, 3))[k]
    nxt = np.zeros((B, w.shape[0], D))
    for h in range(w.shape[0]):
      for i in range(w.shape[1]):
        for j in range(w.shape[2]):
          nxt[:, h] += w[h, i, j] * (xk[:, i] * x[:, j])
    xk = nxt
    pooled.append(xk.sum(-1))  # sum pooling over D
  assert out.shape == (B, 6)
  np.testing.assert_allclose(out, np.concatenate(pooled, -1), rtol=1e-4, atol=1e-5)


def test_cin_output_width_is_sum_of_layer_sizes():
  x0 = _rand(3, B, 3, D)
  cin = CIN((4, 2, 5))
  params = cin.init(jax.random.key(4), x0)
  assert cin.apply(params, x0).shape == (B, 11)
  assert params["params"]["w1"].shape == (2, 4, 3)  # layer 2 reads layer 1's 4 maps


def test_cross_layer_equals_definition():
  x0, xl = _rand(5, B, 7), _rand(6, B, 7)
  layer = CrossLayer()
  params = layer.init(jax.random.key(7), x0, xl)
  params = jax.tree.map(lambda p: p + _rand(8, *p.shape), params)  # nonzero bias
  w, b = params["params"]["w"], params["params"]["b"]
  expected = np.asarray(x0) * (np.asarray(xl) @ np.asarray(w))[:, None] + np.asarray(b) + np.asarray(xl)
  np.testing.assert_allclose(layer.apply(params, x0, xl), expected, rtol=1e-5, atol=1e-5)


def test_cross_net_has_one_w_b_pair_per_layer():
  x0 = _rand(9, B, 7)
  net = CrossNet(3)
  params = net.init(jax.random.key(10), x0)["params"]
  assert sorted(params) == ["cross0", "cross1", "cross2"]
  assert all(sorted(p) == ["b", "w"] and p["w"].shape == (7,) for p in params.values())
  expected = x0
  for i in range(3):  # every layer reads x_0 and the previous layer's output
    expected = CrossLayer().apply({"params": params[f"cross{i}"]}, x0, expected)
  np.testing.assert_allclose(net.apply({"params": params}, x0), expected, rtol=1e-6)


def _groups() -> Groups:
  return Groups(
    item=_rand(11, B, N_ITEM * D),
    behaviour=_rand(12, B, T, N_ITEM * D),
    mask=jnp.arange(T)[None, :] < jnp.array([[5], [2], [0]]),
    user=_rand(13, B, J, D),
    context=_rand(14, B, K, D),
    behaviour_ids=jnp.ones((B, T), jnp.int32),
    linear=_rand(15, B, F),
  )


@pytest.mark.parametrize("name", ["lr", "wdl", "dcn", "deepfm", "xdeepfm"])
def test_model_builds_and_gives_finite_logits(name):
  model = models.get(name, ModelConfig(name=name, embed_dim=D, mlp=(8, 4), cin_layers=(4, 4), cross_layers=2))
  g = _groups()
  params = model.init(jax.random.key(16), g)
  params = jax.tree.map(lambda p: p + 0.1 * _rand(17, *p.shape), params)  # nonzero bias
  logit, extras = model.apply(params, g)
  assert logit.shape == (B,) and np.all(np.isfinite(logit)) and isinstance(extras, dict)
  if name == "lr":
    np.testing.assert_array_equal(logit, params["params"]["first_order"]["bias"] + g.linear.sum(-1))
  if name != "dcn":
    assert type(model).linear_terms is True
  else:
    assert not getattr(type(model), "linear_terms", False)


def test_models_read_every_group():
  g = _groups()
  for name in ("wdl", "dcn", "deepfm", "xdeepfm"):
    model = models.get(name, ModelConfig(name=name, embed_dim=D, mlp=(8, 4), cin_layers=(4, 4), cross_layers=2))
    params = model.init(jax.random.key(18), g)
    base = model.apply(params, g)[0]
    for field in ("item", "behaviour", "user", "context"):
      moved = g.replace(**{field: getattr(g, field) + 1.0})
      assert not np.allclose(model.apply(params, moved)[0], base), (name, field)
