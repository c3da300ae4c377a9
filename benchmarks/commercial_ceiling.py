"""What of the commercial data's Bayes AUC a model of its fields can reach: the planted truth's test-day AUC
with each of its parts removed.

    python -m benchmarks.commercial_ceiling [--scale 0.03] [--seed 0] [--samples 200000]

Draws `--samples` test-day samples from the generator's world at `--scale` (the CPU default is 0.03) and
prints a table: the AUC of the true logit (the Bayes AUC a run prints), and of the logit without the
per-user propensity (`user_bias`, which no field reveals: only a user-id embedding could learn it; the
commercial experiment embeds none), without the item bias, and without each interaction kind (as
`meta.json` records). The first two rows bound what MIAN on the default fields can reach.
"""

from __future__ import annotations

import argparse

import numpy as np

from mian_jax import metrics
from mian_jax.config import DataConfig
from mian_jax.data import commercial


def ceilings(scale: float, seed: int, samples: int) -> list[tuple[str, float]]:
  """(what the truth keeps, its AUC) on `samples` test-day samples of the world at (scale, seed)."""
  d = DataConfig()  # the generator's defaults: 30 days, the last 3 the test split, 50 behaviours
  p = commercial.Params(
    scale=scale,
    seed=seed,
    max_len=d.max_len,
    days=d.days,
    test_days=d.test_days,
    block_size=d.block_size,
    shard_samples=d.shard_samples,
    valid_days=1,
  )
  world = commercial.World(p)
  cols = world.sample(np.random.default_rng(12345), samples, p.days - p.test_days, p.days, p.max_len)
  label, logit = cols["label"], cols["_logit"]
  rows = [
    ("the truth (Bayes AUC)", logit),
    ("without the per-user propensity (no field reveals it)", logit - world.user_bias[cols["user_id"] - 1]),
    ("without the item bias", logit - world.item_bias[cols["item_id"] - 1]),
    ("without candidate x behaviours", cols["_no_beh"]),
    ("without candidate x user profile", cols["_no_user"]),
    ("without candidate x context", cols["_no_ctx"]),
  ]
  return [(name, metrics.auc(label, score)) for name, score in rows]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--scale", type=float, default=0.03)
  ap.add_argument("--seed", type=int, default=0, help="the generator seed (data.seed)")
  ap.add_argument("--samples", type=int, default=200_000)
  args = ap.parse_args()
  rows = ceilings(args.scale, args.seed, args.samples)
  print(f"commercial data, scale {args.scale}, seed {args.seed}: {args.samples:,} test-day samples")
  print("| truth | AUC | below the Bayes AUC |\n|---|---|---|")
  for name, auc in rows:
    print(f"| {name} | {auc:.4f} | {rows[0][1] - auc:.4f} |")


if __name__ == "__main__":
  main()
