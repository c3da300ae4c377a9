"""MIAN's modules against their equations on tiny shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mian_jax import models
from mian_jax.config import ModelConfig
from mian_jax.layers import embedding
from mian_jax.layers.attention import AdditivePool, FieldwiseAdditivePool, masked_softmax
from mian_jax.layers.transformer import Encoder

B, T, J, E = 3, 5, 4, 6


def _rand(key, *shape):
  return jax.random.normal(jax.random.key(key), shape)


def test_masked_softmax_padding_gets_zero_and_rows_sum_to_one():
  scores = _rand(0, B, T)
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
  w = masked_softmax(scores, mask)
  assert np.all(np.asarray(w)[~np.asarray(mask)] == 0)
  np.testing.assert_allclose(w.sum(-1), [1, 1, 0], atol=1e-6)  # an empty history weighs nothing
  expected = np.exp(scores[0, :3]) / np.exp(scores[0, :3]).sum()
  np.testing.assert_allclose(w[0, :3], expected, rtol=1e-5)


def test_additive_pool_matches_equation():
  v = _rand(1, B, T, E)
  mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
  pool = AdditivePool()
  params = pool.init(jax.random.key(2), v, mask)
  out, alpha = pool.apply(params, v, mask)
  w = params["params"]["score"]["kernel"][:, 0]
  b = params["params"]["score"]["bias"][0]
  for i in range(B):
    valid = np.asarray(mask[i])
    s = np.tanh(np.asarray(v[i]) @ np.asarray(w) + float(b))[valid]
    a = np.exp(s) / np.exp(s).sum()
    np.testing.assert_allclose(alpha[i][valid], a, rtol=1e-5)
    assert np.all(np.asarray(alpha[i])[~valid] == 0)
    np.testing.assert_allclose(out[i], (a[:, None] * np.asarray(v[i])[valid]).sum(0), rtol=1e-5, atol=1e-6)


def test_fieldwise_pool_uses_a_distinct_weight_per_field():
  v = _rand(3, B, J, E)
  pool = FieldwiseAdditivePool()
  params = pool.init(jax.random.key(4), v)
  w, b = params["params"]["w"], params["params"]["b"]
  assert w.shape == (J, E) and b.shape == (J,)
  out, alpha = pool.apply(params, v)
  s = np.tanh(np.einsum("bje,je->bj", v, w) + b)
  a = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
  np.testing.assert_allclose(alpha, a, rtol=1e-5)
  np.testing.assert_allclose(alpha.sum(-1), 1, rtol=1e-6)
  np.testing.assert_allclose(out, np.einsum("bj,bje->be", a, v), rtol=1e-5, atol=1e-6)
  # Changing field 1's weights moves only field 1's score.
  p2 = jax.tree.map(lambda x: x, params)
  p2["params"]["w"] = w.at[1].add(1.0)
  _, alpha2 = pool.apply(p2, v)
  s2 = np.tanh(np.einsum("bje,je->bj", v, p2["params"]["w"]) + b)
  np.testing.assert_allclose(s2[:, [0, 2, 3]], s[:, [0, 2, 3]], rtol=1e-6)
  assert not np.allclose(s2[:, 1], s[:, 1])


@pytest.mark.parametrize("pre_ln", [True, False])
def test_encoder_ignores_padding(pre_ln):
  x = _rand(5, B, T, E)
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
  enc = Encoder(layers=2, heads=2, pre_ln=pre_ln)
  params = enc.init(jax.random.key(6), x, mask)
  out = enc.apply(params, x, mask)
  noisy = jnp.where(mask[..., None], x, 100.0 * _rand(7, B, T, E))
  out2 = enc.apply(params, noisy, mask)
  np.testing.assert_allclose(out, out2, atol=1e-5)
  assert np.all(np.asarray(out)[~np.asarray(mask)] == 0)
  assert out.shape == (B, T, E)


def _groups(schema, dim, rows=4):
  from mian_jax.train.state import dummy_batch

  rng = np.random.default_rng(0)
  batch = dummy_batch(schema, rows)
  for f in schema.features:
    if f.kind == "numeric":
      batch[f.name] = rng.random(rows).astype(np.float32)
    elif f.kind == "categorical":
      batch[f.name] = rng.integers(1, f.vocab_size, rows).astype(np.int32)
    else:
      batch[f.name] = rng.integers(1, f.vocab_size, (rows, schema.max_len)).astype(np.int32)
  batch["hist_len"] = np.array([schema.max_len, 3, 0, 1][:rows], np.int32)
  tables = embedding.init_tables(jax.random.key(0), schema, dim)
  return tables, batch, embedding.embed(tables, batch, schema)


def test_embedding_groups_share_tables_and_mask_padding(tiny_source):
  schema = tiny_source.schema
  d = 4
  tables, batch, g = _groups(schema, d)
  n_item = len(schema.group("item"))
  assert g.item.shape == (4, n_item * d)
  assert g.behaviour.shape == (4, schema.max_len, n_item * d)
  assert g.user.shape == (4, len(schema.group("user")), d)
  assert g.context.shape == (4, len(schema.group("context")), d)
  # The candidate's item id and a behaviour's item id read the same table.
  np.testing.assert_array_equal(g.item[0, :d], tables["item"][batch["item_id"][0]])
  age = tables["hist_age_days"][batch["hist_age_days"][0, 0]]
  expected = (
    jnp.concatenate([tables["item"][batch["hist_item_id"][0, 0]], tables["cate"][batch["hist_item_cate"][0, 0]]]) + age
  )
  np.testing.assert_allclose(g.behaviour[0, 0], expected, rtol=1e-6)
  np.testing.assert_array_equal(g.mask.sum(1), [schema.max_len, 3, 0, 1])
  assert np.all(np.asarray(g.behaviour)[~np.asarray(g.mask)] == 0)
  # A numeric field is its value times a learned vector.
  j = [f.name for f in schema.group("user")].index("activity")
  np.testing.assert_allclose(g.user[:, j], batch["activity"][:, None] * tables["numeric:activity"][0], rtol=1e-6)


@pytest.mark.parametrize("name", [n for n in models.names() if n.startswith("mian")])
def test_mian_shapes_and_attention(tiny_source, name):
  schema = tiny_source.schema
  cfg = ModelConfig(embed_dim=4, gim_dim=8, mlp=(8,))
  _, _, g = _groups(schema, cfg.embed_dim)
  model = models.get(name, cfg)
  params = model.init(jax.random.key(1), g, False)
  logit, attn = model.apply(params, g, False)
  assert logit.shape == (4,) and np.all(np.isfinite(logit))
  if "ibim" in attn:
    a = np.asarray(attn["ibim"])
    assert a.shape == (4, schema.max_len)
    assert np.all(a[~np.asarray(g.mask)] == 0)
    np.testing.assert_allclose(a.sum(1), [1, 1, 0, 1], atol=1e-5)  # row 2 has no history
  for key, n in (("iuim", len(schema.group("user"))), ("icim", len(schema.group("context")))):
    if key in attn:
      assert attn[key].shape == (4, n)
      np.testing.assert_allclose(attn[key].sum(1), 1, rtol=1e-5)
  if "gim" in attn:
    np.testing.assert_allclose(attn["gim"].sum(1), 1, rtol=1e-5)
  assert ("ibim" in attn) == (name != "mian_no_ibim")
  assert ("iuim" in attn) == (name not in ("mian_no_iuim", "mian_no_iuim_icim"))
  assert ("icim" in attn) == (name not in ("mian_no_icim", "mian_no_iuim_icim"))
  assert ("gim" in attn) == (name != "mian_no_gim")
