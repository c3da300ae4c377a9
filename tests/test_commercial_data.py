"""The generated commercial data: deterministic, cached, shaped like the paper's set, with a real ceiling."""



from benchmarks import commercial_ceiling
from mian_jax.data import commercial


def _params(**kw):
  base = dict(scale=0.0003, seed=5, max_len=50, days=30, test_days=3, block_size=64, shard_samples=4096)
  return commercial.Params(**{**base, **kw})


def test_deterministic_and_cached(tmp_path):
  d1, m1 = commercial.build(str(tmp_path / "a"), _params())
  d2, m2 = commercial.build(str(tmp_path / "b"), _params())
  for name in m1["files"]["train"] + m1["files"]["test"]:
    assert (d1 / name).read_bytes() == (d2 / name).read_bytes()
  stamp = (d1 / "meta.json").stat().st_mtime_ns
  d3, _ = commercial.build(str(tmp_path / "a"), _params())
  assert d3 == d1 and (d1 / "meta.json").stat().st_mtime_ns == stamp  # reused, not rewritten
  d4, _ = commercial.build(str(tmp_path / "a"), _params(seed=6))
  assert d4 != d1


def test_statistics_mirror_the_paper_and_each_interaction_matters(tmp_path):
  _, meta = commercial.build(str(tmp_path), _params(scale=0.003, shard_samples=40000))  # 10k test samples
  s = meta["stats"]
  assert 0.08 < s["label_rate"]["train"] < 0.12
  assert 0.74 < s["bayes_auc"] < 0.82
  for kind in ("behaviour", "user", "context"):
    assert s[f"auc_without_{kind}_interaction"] < s["bayes_auc"] - 0.015, kind
  assert 0.4 < s["share_behaviours_older_than_30_days"] < 0.6
  assert s["share_candidates_unrelated_to_history"] > 0.2
  assert abs(s["rows"]["test"] / (s["rows"]["train"] + s["rows"]["test"]) - 0.1) < 0.02
  schema = meta["schema"]
  groups = {f["group"] for f in schema["features"]}
  assert groups == {"item", "behaviour", "user", "context"}


def test_the_ceiling_table_puts_the_truth_first_and_the_propensity_a_small_part_of_it():
  rows = dict(commercial_ceiling.ceilings(scale=0.0003, seed=5, samples=20000))
  bayes = rows.pop("the truth (Bayes AUC)")
  assert 0.74 < bayes < 0.82 and all(auc < bayes for auc in rows.values())
  # the part no field reveals is small: a model of the fields can get close to the Bayes AUC
  assert bayes - rows["without the per-user propensity (no field reveals it)"] < 0.01
  assert bayes - rows["without candidate x behaviours"] > 0.03
