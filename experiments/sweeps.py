"""Sweeps by name: each is a list of trials, a trial being the `--set` overrides it adds to the experiment.

  python launch.py --experiment EXP --sweep NAME [--set KEY=VALUE ...] [--set sweep.seeds=3]

`grid(...)` is the product of its axes (first axis outermost), `+` joins lists. Every trial runs in
`runs/<EXP>[-<VARIANT>]/sweeps/<NAME>/<trial id>/` (under `--workdir DIR` when given); the id is made
from the overrides (`name=din,seed=1`), so the same trial always gets the same id and directory.
`--set sweep.seeds=N` repeats every trial that does not set `train.seed` with seeds 0..N-1, and
`results.md` reports each setting as mean ± std over them.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

from mian_jax.models import ABLATIONS, BASELINES, DIEN_PARTS


def grid(axes: dict[str, Iterable[Any]]) -> list[dict[str, str]]:
  """Every combination of the axes' values, e.g. grid({"model.name": ["din", "mian"], "train.seed": [0, 1]})."""
  keys = list(axes)
  return [dict(zip(keys, map(str, values))) for values in itertools.product(*(list(axes[k]) for k in keys))]


SWEEPS: dict[str, Callable[[], list[dict[str, str]]]] = {
  # The paper's Table 2: the seven baselines, MIAN and the paper's MIAN.
  "paper_table": lambda: grid({"model.name": [*BASELINES, "mian", "mian_paper"]}),
  # The same models on real behaviour data (yelp, movielens; README "MIAN on real data").
  "real_table": lambda: grid({"model.name": [*BASELINES, "mian", "mian_paper"]}),
  # The sequence models alone (their layers' speed work is checked against real_table's AUCs: README, "Speed and scale").
  "sequence_models": lambda: grid({"model.name": ["din", "dien", "mian"]}),
  # The models FuxiCTR's Yelp numbers cover (../shared/data/yelp/PEER.md), and MIAN, for a run under PEER.md's
  # protocol (--set data.validation=test): DeepFM and DIN with 3 seeds, then DIEN and MIAN (each ~20 minutes a
  # trial on a 2-core CPU) with one; `--set sweep.seeds=3` gives every model 3 seeds.
  # PEER.md's protocol is 3 epochs, the best chosen on test, no early stopping.
  "peer": lambda: [
    {**t, "train.epochs": "3", "train.early_stop_patience": "0"}
    for t in [{"model.name": m, "train.seed": str(s)} for m in ("deepfm", "din") for s in range(3)]
    + grid({"model.name": ["dien", "mian"]})
  ],
  # Our DIN against FuxiCTR's (models/din.py lists the differences), under PEER.md's protocol (run with
  # --set data.validation=test): the default, each difference taken over from FuxiCTR, and all of them.
  "din_peer": lambda: [
    {"model.name": "din", "train.epochs": "3", "train.early_stop_patience": "0", **t}
    for t in [
      {},
      {"model.din_inputs": "attention"},
      {"model.mlp_activation": "relu"},
      {"model.attention_mlp": "64"},
      {"model.din_inputs": "attention", "model.mlp_activation": "relu", "model.attention_mlp": "64"},
    ]
  ],
  # The candidate x history product e_i * sum e_b, which DIN's and DIEN's reference code feed their MLP, for the
  # 3 epochs of PEER.md's protocol: MIAN with it, DIEN without it. Run with --set data.validation=test (beside
  # the `peer` sweep's models) or holdout (beside `real_table`'s Yelp trials, which trained 3 epochs).
  "product_3_epochs": lambda: [
    {"model.name": "mian", "model.candidate_product": "history", "train.epochs": "3", "train.early_stop_patience": "0"},
    {"model.name": "dien_no_product", "train.epochs": "3", "train.early_stop_patience": "0"},
  ],
  # The paper's ablations: MIAN, each module removed, and the IBIM encoder variants (without the auxiliary loss,
  # which those encoders cannot take: the yelp experiment's MIAN has it).
  "ablations": lambda: (
    grid({"model.name": ["mian", *ABLATIONS]})
    + grid({"model.name": ["mian"], "model.ibim_encoder": ["post_ln", "none"], "model.ibim_aux_loss": ["false"]})
  ),
  # The paper's ablation table alone (MIAN and each module removed): ablations without the encoder variants, for
  # the larger data sets (the same trial names, so ablations in the same root reuses them). The modules the
  # paper's table removes come first (IBIM, whose removal the paper finds costs most, first of all; GIM before
  # ICIM, which is MIAN itself on a data set without context fields such as Yelp, as no_iuim_icim is then
  # no_iuim) and MIAN itself last: a sweep cut short has the ablations that act, and MIAN's row may come
  # from an earlier sweep of the same config.
  "module_ablations": lambda: grid(
    {"model.name": ["mian_no_ibim", "mian_no_iuim", "mian_no_gim", "mian_no_icim", "mian_no_iuim_icim", "mian"]}
  ),
  # Embedding width for MIAN and DIN, three seeds each (mean ± std in results.md).
  "embed_dim": lambda: grid({"model.name": ["din", "mian"], "model.embed_dim": [8, 18, 32], "train.seed": [0, 1, 2]}),
  # MIAN's IBIM options (position of the behaviours x pooling score) beside DIN and DIEN: the measurement
  # behind the defaults of model.ibim_position / model.ibim_attention (README, "MIAN on real data").
  "mian_options": lambda: (
    grid({"model.ibim_position": ["none", "learned", "sinusoidal"], "model.ibim_attention": ["additive", "target"]})
    + grid({"model.name": ["din", "dien"]})
  ),
  # The same, smaller (for the larger data sets): IBIM as the paper writes it, with both options, and DIEN.
  "mian_vs_dien": lambda: [
    {"model.ibim_position": "none", "model.ibim_attention": "additive"},
    {"model.ibim_position": "learned", "model.ibim_attention": "target"},
    {"model.name": "dien"},
  ],
  # Probes of what MIAN's IBIM and MLP read (after mian_options): no encoder, summed behaviours, a Dice MLP.
  "mian_probe": lambda: [
    {"model.ibim_attention": "target", "model.ibim_position": "none", **extra}
    for extra in (
      {"model.ibim_encoder": "none", "model.ibim_aux_loss": "false"},
      {"model.behaviour_pool": "sum"},
      {"model.mlp_activation": "dice"},
    )
  ],
  # MIAN with DIN's Dice MLP, with and without IBIM's encoder.
  "mian_dice": lambda: [
    {"model.ibim_attention": "target", "model.ibim_position": "none", "model.mlp_activation": "dice", **extra}
    for extra in ({}, {"model.ibim_encoder": "none", "model.ibim_aux_loss": "false"})
  ],
  # IBIM's shape around the default (1 block, 2 heads, FFN 2 x width): a second block, one head, FFN 4 x width.
  "ibim_shape": lambda: [{}, {"model.ibim_layers": "2"}, {"model.ibim_heads": "1"}, {"model.ibim_ffn_mult": "4"}],
  # The accelerator default batch of --experiment commercial (experiments/commercial.py: ACCELERATOR): test AUC
  # at equal epochs for batch 1024 (the CPU default) and 8192 at two learning rates.
  "accelerator_batch": lambda: [
    {"train.batch_size": "1024", "train.learning_rate": "0.004"},
    {"train.batch_size": "8192", "train.learning_rate": "0.004"},
    {"train.batch_size": "8192", "train.learning_rate": "0.008"},
  ],
  # What DIEN gains over DIN, part by part (models/dien.py): DIEN, each part taken away, and DIN.
  "dien_parts": lambda: (
    grid({"model.name": ["dien", *DIEN_PARTS]})
    + [{"model.name": "dien", "model.aux_loss_weight": "0"}, {"model.name": "din"}]
  ),
  # The two parts of dien_parts that say whether DIEN's lead over DIN is its extractor GRU or its AUGRU, beside
  # both (a third of dien_parts' time; the same trial names, so dien_parts in the same root reuses them all).
  "dien_sequence_parts": lambda: grid({"model.name": ["dien", "dien_gru_attention", "dien_no_extractor", "din"]}),
  # The rest of dien_parts beside dien_sequence_parts: DIEN without the product, its final state alone, and without
  # its auxiliary loss (the same trial names, so dien_parts in the same root reuses both sweeps' trials).
  "dien_other_parts": lambda: [
    {"model.name": "dien_no_product"},
    {"model.name": "dien_state_only"},
    {"model.name": "dien", "model.aux_loss_weight": "0"},
  ],
  # MIAN's sequential and product options one at a time (README, "MIAN on real data"; the default, `fields`
  # and the two together are in mian_candidates).
  "mian_sequential": lambda: [
    {"model.candidate_product": "history"},
    {"model.ibim_encoder": "gru"},
    {"model.ibim_encoder": "gru_pre_ln"},
    {"model.ibim_encoder": "causal"},
    {"model.ibim_last_state": "true"},
    {"model.ibim_candidate_token": "true"},
  ],
  # The short list at convergence: the strongest baselines on MovieLens and Yelp, MIAN as the paper has
  # it, with the candidate products, and with them a GRU encoder and its last state.
  "mian_candidates": lambda: (
    [{"model.name": m} for m in ("wdl", "din", "dien", "mian")]
    + [
      {"model.name": "mian", "model.candidate_product": "fields"},
      {
        "model.name": "mian",
        "model.candidate_product": "fields",
        "model.ibim_encoder": "gru",
        "model.ibim_last_state": "true",
      },
    ]
  ),
  # The product with what else helped on Yelp: ReLU in the MLP (DIN's best there, `din_peer`) and DIEN's view of
  # the history (a GRU encoder and its state at the last behaviour).
  "mian_combined": lambda: [
    {"model.candidate_product": "history", "model.mlp_activation": "relu"},
    {"model.candidate_product": "history", "model.ibim_encoder": "gru", "model.ibim_last_state": "true"},
  ],
  # DIEN's auxiliary loss on MIAN's GRU encoder (model.ibim_aux_loss), alone and with the candidate x history
  # product: DIEN without that loss loses most of its lead on Yelp (dien_other_parts).
  "mian_aux": lambda: [
    {"model.ibim_encoder": "gru", "model.ibim_aux_loss": "true"},
    {"model.ibim_encoder": "gru", "model.ibim_aux_loss": "true", "model.candidate_product": "history"},
  ],
  # The auxiliary loss on IBIM's other encoders whose states read the history in order: the causal Pre-LN
  # Transformer, and the GRU under the Pre-LN Transformer (the loss on the GRU's states).
  "mian_aux_encoders": lambda: [
    {"model.ibim_encoder": e, "model.ibim_aux_loss": "true"} for e in ("causal", "gru_pre_ln")
  ],
  # The choice of MIAN's default (config.ModelConfig): the default, the paper's IBIM with the candidate x
  # history product, and the previous default (the paper's IBIM, DIN's activation unit pooling it), on the
  # validation splits of Yelp, MovieLens-100k and the commercial data (docs/results/mian-default).
  "mian_default": lambda: [
    {"model.name": "mian"},
    {"model.ibim_encoder": "pre_ln", "model.ibim_aux_loss": "false"},
    {"model.ibim_encoder": "pre_ln", "model.ibim_aux_loss": "false", "model.candidate_product": "none"},
  ],
  # A minute-long check of a machine: two fast models, two seeds.
  "smoke": lambda: grid({"model.name": ["lr", "deepfm"], "train.seed": [0, 1]}),
}


def names() -> list[str]:
  return sorted(SWEEPS)


def trials(name: str, seeds: int = 0) -> list[dict[str, str]]:
  """The sweep's trials; with `seeds` > 0, each trial without its own train.seed once per seed 0..seeds-1."""
  if name not in SWEEPS:
    raise KeyError(name)
  out = []
  for t in SWEEPS[name]():
    out += [t] if seeds <= 0 or "train.seed" in t else [{**t, "train.seed": str(s)} for s in range(seeds)]
  return out
