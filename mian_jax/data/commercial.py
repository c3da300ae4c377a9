"""A commercial-scale CTR data set with a planted ground truth, mirroring the paper's private Alipay set.

The Alipay set (2,163,147 users, 41 items, 41 categories, 36,096,332 samples) is private. This
generator mirrors its shape: 41 candidate items (one category each), long behaviour histories of
which about half are older than 30 days, candidates that are often unrelated to any past behaviour,
and rich user-profile and context fields. Every sample's click probability is known:

    logit = b0 + item_bias[i] + user_bias[u]
          + s_beh  * sum_t S[i, b_t] w_t / (sum_t w_t + 1/2), w_t = exp(-age_t / tau)   candidate x recent behaviours
          + s_user * sum_j <A[i], G_j[u_j]>  + a_i * (activity - 0.5)       candidate x user profile
          + s_ctx  * sum_k <A'[i], H_k[c_k]>                                candidate x context

(an age-weighted average of candidate-behaviour affinities: what attention pooling over the history
can express), with S[i, j] = 1 for the same item, 0.5 for items of the same cluster, 0 otherwise;
A, A', a low-rank item factors, mostly their cluster's (tastes act on kinds of items); G, H random
low-rank factors per profile / context value. user_bias is a per-user propensity no field reveals
(only a user-id embedding could learn it). b0 is set so that about 10% of samples are clicks. Because p is known, the
Bayes-optimal test AUC (ranking by the true p) is the ceiling any model can reach; `stats` also
reports the AUC of the true logit with each interaction kind removed, to show each carries signal.

Everything is a function of (seed, parameters): the world (items, users, factors) from `seed`, shard
i's samples from (seed, i). Time split: days [0, days - test_days) train, the rest test.
gAUC groups by user_id as stored: it is the generated user's index + 1, not a training vocabulary, so
every test user has an id of its own whether or not it has training samples (no user is OOV).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from mian_jax import metrics
from mian_jax.data import records, shards
from mian_jax.schema import Feature, FeatureSchema

FULL_USERS = 2_163_147
FULL_SAMPLES = 36_096_332
N_ITEMS = 41
N_CLUSTERS = 8
RANK = 4
ITEM_SPREAD = 0.3  # how far an item's taste factors stray from its cluster's
USER_BIAS_STD = 0.15  # a per-user click propensity no field reveals (learnable only from the user id, which is
# not embedded by default: ~15 impressions per user); it lowers what any model can reach
TAU_DAYS = 10.0  # behaviour relevance halves about every week
MAX_AGE = 365
BASE_RATE = 0.10
# Strength of each interaction kind (tuned so the Bayes AUC is ~0.78 and each kind matters).
S_BEH, S_USER, S_CTX = 4.0, 0.5, 0.6

USER_FIELDS = {"age_bucket": 7, "gender": 2, "occupation": 20, "city": 300, "city_tier": 5, "consumption": 5}
USER_SIGNAL = ("age_bucket", "gender", "occupation", "city_tier", "consumption")  # city is noise
CONTEXT_FIELDS = {"hour": 24, "weekday": 7, "season": 4, "weather": 6, "location_type": 5, "device": 4}


def make_schema(num_users: int, max_len: int, embed_user_id: bool = False) -> FeatureSchema:
  """The commercial schema. The user id is stored (gAUC groups by it) but by default not embedded: with
  ~15 training impressions per user its embedding memorises label noise and lowers the test AUC."""
  f = Feature
  feats = [
    f("item_id", "item", "categorical", N_ITEMS + 1, "item"),
    f("item_cate", "item", "categorical", N_ITEMS + 1, "cate"),
    f("hist_item_id", "behaviour", "sequence", N_ITEMS + 1, "item"),
    f("hist_item_cate", "behaviour", "sequence", N_ITEMS + 1, "cate"),
    f("hist_age_days", "behaviour", "sequence", MAX_AGE + 2),  # age + 1 (0 = padding)
    f("user_id", "user", "categorical", num_users + 1, embed=embed_user_id),
  ]
  feats += [f(name, "user", "categorical", n + 1) for name, n in USER_FIELDS.items()]
  feats.append(f("activity", "user", "numeric"))
  feats += [f(name, "context", "categorical", n + 1) for name, n in CONTEXT_FIELDS.items()]
  return FeatureSchema(tuple(feats), user_key="user_id", max_len=max_len)


@dataclasses.dataclass(frozen=True)
class Params:
  scale: float
  seed: int
  max_len: int
  days: int
  test_days: int
  block_size: int
  shard_samples: int
  valid_days: int = 0  # the last training days held out as the validation split (data.validation=holdout: 1)

  @property
  def num_users(self) -> int:
    return max(100, round(FULL_USERS * self.scale))

  @property
  def num_samples(self) -> int:
    return max(1000, round(FULL_SAMPLES * self.scale))


class World:
  """Items, users and the planted click model, all drawn from the seed."""

  def __init__(self, p: Params):
    rng = np.random.default_rng([p.seed, 7919])
    u = p.num_users
    self.item_cate = 1 + rng.permutation(N_ITEMS)  # one category per item, as in the paper's set
    self.cluster = rng.integers(0, N_CLUSTERS, N_ITEMS)
    pop = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.8
    self.item_pop = rng.permutation(pop / pop.sum())
    same = self.cluster[:, None] == self.cluster[None, :]
    self.affinity = np.where(np.eye(N_ITEMS, dtype=bool), 1.0, np.where(same, 0.5, 0.0))
    self.cluster_items = [np.flatnonzero(self.cluster == c) for c in range(N_CLUSTERS)]
    self.item_bias = rng.normal(0, 0.3, N_ITEMS)

    # Item factors: mostly their cluster's (tastes act on kinds of items), plus a little of their own.
    def item_factors(*shape: int) -> np.ndarray:
      own = rng.normal(0, 1, (N_ITEMS,) + shape)
      return (rng.normal(0, 1, (N_CLUSTERS,) + shape)[self.cluster] + ITEM_SPREAD * own) / np.sqrt(1 + ITEM_SPREAD**2)

    self.item_user_vec = item_factors(RANK)
    self.item_ctx_vec = item_factors(RANK)
    self.item_activity = 0.8 * item_factors()
    self.user_vecs = {k: rng.normal(0, 1 / np.sqrt(RANK * len(USER_SIGNAL)), (n, RANK)) for k, n in USER_FIELDS.items()}
    self.ctx_vecs = {
      k: rng.normal(0, 1 / np.sqrt(RANK * len(CONTEXT_FIELDS)), (n, RANK)) for k, n in CONTEXT_FIELDS.items()
    }
    # Users: a profile, an activity level, a favourite cluster, a main device and a history length.
    city = rng.integers(0, USER_FIELDS["city"], u)
    self.users = {
      "age_bucket": rng.choice(7, u, p=[0.05, 0.2, 0.25, 0.2, 0.15, 0.1, 0.05]),
      "gender": rng.integers(0, 2, u),
      "occupation": rng.integers(0, USER_FIELDS["occupation"], u),
      "city": city,
      "city_tier": np.minimum(city // 20, 4),  # low city ids are the big cities
      "consumption": rng.choice(5, u, p=[0.3, 0.3, 0.2, 0.15, 0.05]),
    }
    self.activity = rng.beta(2, 3, u).astype(np.float32)
    self.user_bias = rng.normal(0, USER_BIAS_STD, u)
    self.user_weight = rng.lognormal(0, 1, u)
    self.user_weight /= self.user_weight.sum()
    cluster_pop = np.array([self.item_pop[c].sum() for c in self.cluster_items])
    self.fav_cluster = rng.choice(N_CLUSTERS, u, p=cluster_pop / cluster_pop.sum())
    self.device = rng.choice(4, u, p=[0.45, 0.4, 0.1, 0.05])
    self.hist_mean = rng.lognormal(np.log(18), 0.9, u)
    self.b0 = 0.0
    self.b0 = self._calibrate(p)

  def _calibrate(self, p: Params) -> float:
    """Chooses b0 so that the mean click probability is BASE_RATE."""
    s = self.sample(np.random.default_rng([p.seed, 104729]), 20000, 0, p.days, p.max_len)
    z = s["_logit"]
    lo, hi = -15.0, 15.0
    for _ in range(60):
      mid = (lo + hi) / 2
      lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(z + mid)))) < BASE_RATE else (lo, mid)
    return (lo + hi) / 2

  def sample(self, rng: np.random.Generator, n: int, day_lo: int, day_hi: int, max_len: int) -> dict[str, np.ndarray]:
    """n samples with days in [day_lo, day_hi): feature columns, labels and the true logit parts."""
    user = rng.choice(len(self.user_weight), n, p=self.user_weight)
    item = rng.choice(N_ITEMS, n, p=self.item_pop)  # candidate: independent of the history
    day = rng.integers(day_lo, day_hi, n)
    hour_p = np.array([1, 0.5, 0.3, 0.3, 0.3, 0.5, 1, 2, 3, 3, 3, 3, 4, 3, 3, 3, 3, 3, 4, 5, 6, 6, 4, 2], float)
    ctx = {
      "hour": rng.choice(24, n, p=hour_p / hour_p.sum()),
      "weekday": (day + 3) % 7,
      "season": rng.integers(0, 4, n),
      "weather": rng.choice(6, n, p=[0.4, 0.25, 0.15, 0.1, 0.05, 0.05]),
      "location_type": rng.choice(5, n, p=[0.35, 0.3, 0.15, 0.1, 0.1]),
      "device": np.where(rng.random(n) < 0.8, self.device[user], rng.integers(0, 4, n)),
    }
    # Histories: oldest first; ages ~ Exp(40 days) so that about half are older than 30 days.
    length = np.minimum(rng.poisson(self.hist_mean[user]), max_len)
    t = np.arange(max_len)[None, :]
    valid = t < length[:, None]
    age = np.minimum(rng.exponential(40.0, (n, max_len)), MAX_AGE).astype(np.int64)
    age = np.where(valid, age, -1)
    age = -np.sort(-age, axis=1)  # descending: oldest first, padding (-1) last
    fav = self.fav_cluster[user]
    from_fav = rng.random((n, max_len)) < 0.75
    fav_pick = np.empty((n, max_len), np.int64)
    for c in range(N_CLUSTERS):  # vectorised per cluster
      rows = fav == c
      fav_pick[rows] = rng.choice(self.cluster_items[c], (int(rows.sum()), max_len))
    beh = np.where(from_fav, fav_pick, rng.choice(N_ITEMS, (n, max_len), p=self.item_pop))
    decay = np.where(valid, np.exp(-np.maximum(age, 0) / TAU_DAYS), 0.0)
    f_beh = S_BEH * (self.affinity[item[:, None], beh] * decay).sum(1) / (decay.sum(1) + 0.5)
    f_user = S_USER * sum(
      (self.item_user_vec[item] * self.user_vecs[k][self.users[k][user]]).sum(1) for k in USER_SIGNAL
    )
    f_user = f_user + self.item_activity[item] * (self.activity[user] - 0.5)
    f_ctx = S_CTX * sum((self.item_ctx_vec[item] * self.ctx_vecs[k][v]).sum(1) for k, v in ctx.items())
    bias = self.b0 + self.item_bias[item] + self.user_bias[user]
    logit = bias + f_beh + f_user + f_ctx
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.uint8)
    cols = {
      "label": label,
      "item_id": item + 1,
      "item_cate": self.item_cate[item],
      "hist_item_id": np.where(valid, beh + 1, 0),
      "hist_item_cate": np.where(valid, self.item_cate[beh], 0),
      "hist_age_days": np.where(valid, age + 1, 0),
      "hist_len": length,
      "user_id": user + 1,
      "activity": self.activity[user],
    }
    cols.update({k: self.users[k][user] + 1 for k in USER_FIELDS})
    cols.update({k: v + 1 for k, v in ctx.items()})
    cols.update({"_logit": logit, "_no_beh": logit - f_beh, "_no_user": logit - f_user, "_no_ctx": logit - f_ctx})
    return cols


@functools.lru_cache(maxsize=2)
def _world(p: Params) -> World:
  return World(p)


def _split_sizes(p: Params, num_shards: int, index: int) -> dict[str, int]:
  per_shard = p.num_samples // num_shards + (index < p.num_samples % num_shards)
  test = round(per_shard * p.test_days / p.days)
  valid = round(per_shard * p.valid_days / p.days)
  train = (per_shard - test - valid) // p.block_size * p.block_size  # whole blocks, so every train batch is full
  return {"train": train, "valid": valid, "test": test}


def _write_shard(p: Params, directory: Path, num_shards: int, index: int) -> dict[str, Any]:
  world = _world(p)
  schema = make_schema(p.num_users, p.max_len)
  rng = np.random.default_rng([p.seed, index])
  sizes = _split_sizes(p, num_shards, index)
  first_held = p.days - p.test_days - p.valid_days
  days = {"train": (0, first_held), "valid": (first_held, p.days - p.test_days), "test": (p.days - p.test_days, p.days)}
  out: dict[str, Any] = {"blocks": {}, "rows": {}, "clicks": {}, "unrelated": 0, "old_behaviours": 0, "behaviours": 0}
  for split in shards.SPLITS:
    if not sizes[split]:  # no validation split: nothing drawn, so train and test are as without one
      out["blocks"][split], out["rows"][split], out["clicks"][split] = [], 0, 0
      continue
    cols = world.sample(rng, sizes[split], *days[split], p.max_len)
    starts = range(0, sizes[split], p.block_size)
    blocks = [records.encode_block(schema, {k: v[s : s + p.block_size] for k, v in cols.items()}) for s in starts]
    shards.write_records(shards.shard_path(directory, split, index, num_shards), blocks)
    out["blocks"][split] = [min(p.block_size, sizes[split] - s) for s in starts]
    out["rows"][split] = sizes[split]
    out["clicks"][split] = int(cols["label"].sum())
    valid = np.arange(p.max_len)[None, :] < cols["hist_len"][:, None]
    out["behaviours"] += int(valid.sum())
    out["old_behaviours"] += int(((cols["hist_age_days"] - 1 > 30) & valid).sum())
    related = (world.affinity[cols["item_id"][:, None] - 1, np.maximum(cols["hist_item_id"] - 1, 0)] > 0) & valid
    out["unrelated"] += int((~related.any(1)).sum())
    if split == "test":
      np.savez(
        directory / f"truth-{index:05d}.npz",
        label=cols["label"],
        **{k: cols[k].astype(np.float32) for k in ("_logit", "_no_beh", "_no_user", "_no_ctx")},
      )
  return out


def _finish(directory: Path, stats: list[dict]) -> dict[str, Any]:
  truth = [np.load(directory / f"truth-{i:05d}.npz") for i in range(len(stats))]
  label = np.concatenate([t["label"] for t in truth])
  auc = {
    k: metrics.auc(label, np.concatenate([t[k] for t in truth])) for k in ("_logit", "_no_beh", "_no_user", "_no_ctx")
  }
  rows = {s: sum(st["rows"][s] for st in stats) for s in shards.SPLITS}
  return {
    "rows": rows,
    "label_rate": {s: sum(st["clicks"][s] for st in stats) / max(1, rows[s]) for s in shards.SPLITS},
    "bayes_auc": auc["_logit"],
    "auc_without_behaviour_interaction": auc["_no_beh"],
    "auc_without_user_interaction": auc["_no_user"],
    "auc_without_context_interaction": auc["_no_ctx"],
    "share_behaviours_older_than_30_days": sum(st["old_behaviours"] for st in stats)
    / max(1, sum(st["behaviours"] for st in stats)),
    "share_candidates_unrelated_to_history": sum(st["unrelated"] for st in stats) / max(1, sum(rows.values())),
  }


def build(root: str, p: Params) -> tuple[Path, dict[str, Any]]:
  """Generates (or reuses) the data set; returns its directory and meta."""
  params = {"generator": "commercial/4", **dataclasses.asdict(p)}
  directory = shards.dataset_dir(root, "commercial", params)
  num_shards = max(1, -(-p.num_samples // p.shard_samples))
  meta = shards.build(
    directory,
    make_schema(p.num_users, p.max_len),
    params,
    num_shards,
    functools.partial(_write_shard, p, directory, num_shards),
    functools.partial(_finish, directory),
    desc=f"generating commercial data ({p.num_samples:,} samples)",
  )
  return directory, meta
