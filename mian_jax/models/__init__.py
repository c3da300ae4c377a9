"""The model registry: every model is a Flax module `model(groups, train) -> (logit [B], extras)`.

`extras` is a dict: attention weights by module (MIAN, DIN) and, for DIEN, `aux_loss` (added to the
loss by the trainer with weight `model.aux_loss_weight`). A model class that sets `linear_terms = True`
gets first-order weights per field in `groups.linear` (LR, Wide&Deep, DeepFM, xDeepFM).
`get(name, cfg)` builds one; `names()` lists them (shown by `launch.py --help`). Entries name their
module and class so that a model's file is imported only when it is used.

Every model receives the whole `ModelConfig` but reads only some of its fields: `fields(name)` lists
them, declared by hand per entry below. They are the fields that change what the model computes or
stores: its own reads of `cfg.*` (and the conditions on them, e.g. `attention_mlp` for MIAN's default
target attention), plus what the trainer reads for it from `config.model` (`embed_dim`, the width of
every embedding table, for all of them; `aux_loss_weight` for a model whose training extras hold an
`aux_loss`). A checkpoint resumes under any change of the other fields: the run's identity
(train/workdir.py) holds only `name` and these. tests/test_model_fields.py checks that changing any
undeclared field changes neither a model's parameters nor its output.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, NamedTuple

import flax.linen as nn

from mian_jax.config import ModelConfig


class _Entry(NamedTuple):
  module: str  # under mian_jax.models
  cls: str
  kwargs: dict[str, Any]
  fields: tuple[str, ...]  # the ModelConfig fields this model reads (see the module docstring)
  sets: dict[str, Any] = {}  # ModelConfig fields the entry fixes (it reads none of them from the config)


# MIAN's fields by the module reading them (an ablation leaves out what its missing module reads).
_IBIM = (
  "ibim_position",
  "ibim_encoder",
  "ibim_layers",
  "ibim_heads",
  "ibim_ffn_mult",
  "ibim_attention",
  "ibim_sink",
  "attention_mlp",
  "ibim_last_state",
  "ibim_candidate_token",
  "ibim_aux_loss",
  "aux_loss_weight",
)  # attention_mlp: ibim_attention=target's unit
_GIM = ("gim_dim", "mlp_on_concat")  # without GIM the MLP always reads the concatenation
_MIAN_TOWER = ("candidate_product", "behaviour_pool", "mlp", "mlp_activation", "dropout")
_DIEN = ("embed_dim", "gru_dim", "attention_mlp", "mlp", "dropout", "aux_loss_weight")

# The options mian_paper fixes: the paper's equations (models/mian.py), where the package's MIAN defaults to
# the configuration chosen on validation (config.ModelConfig).
PAPER: dict[str, Any] = {
  "ibim_encoder": "pre_ln",
  "ibim_attention": "additive",
  "ibim_position": "none",
  "ibim_aux_loss": False,
  "ibim_last_state": False,
  "ibim_candidate_token": False,
  "ibim_sink": False,
  "candidate_product": "none",
  "mlp_on_concat": False,
}

_REGISTRY: dict[str, _Entry] = {
  "lr": _Entry("lr", "LR", {}, ("embed_dim",)),  # reads no embedding, but the trainer builds the tables
  "wdl": _Entry("wdl", "WideDeep", {}, ("embed_dim", "mlp", "dropout")),
  "dcn": _Entry("dcn", "DCN", {}, ("embed_dim", "cross_layers", "mlp", "dropout")),
  "deepfm": _Entry("deepfm", "DeepFM", {}, ("embed_dim", "mlp", "dropout")),
  "xdeepfm": _Entry("xdeepfm", "XDeepFM", {}, ("embed_dim", "cin_layers", "mlp", "dropout")),
  "din": _Entry("din", "DIN", {}, ("embed_dim", "mlp", "mlp_activation", "dropout", "attention_mlp", "din_inputs")),
  "dien": _Entry("dien", "DIEN", {}, _DIEN),
  # DIEN's parts taken away one at a time (models/dien.py)
  "dien_no_product": _Entry("dien", "DIEN", {"history_sum": "sum"}, _DIEN),
  "dien_state_only": _Entry("dien", "DIEN", {"history_sum": "none"}, _DIEN),
  "dien_gru_attention": _Entry("dien", "DIEN", {"evolution": "attention_pool"}, _DIEN),
  "dien_no_extractor": _Entry(
    "dien", "DIEN", {"use_extractor": False}, ("embed_dim", "attention_mlp", "mlp", "dropout")
  ),
  "mian": _Entry("mian", "MIAN", {}, ("embed_dim", *_IBIM, *_GIM, *_MIAN_TOWER)),
  # The paper's model (Zhang et al. 2021) whatever the config's MIAN options: IBIM a Pre-LN Transformer
  # pooled by the paper's additive score, no position, no auxiliary loss, no candidate product, the MLP on
  # GIM's output R_g alone. What the paper leaves open (widths, pooling of e_b, MLP activation) is the config's.
  "mian_paper": _Entry(
    "mian",
    "MIAN",
    {},
    (
      "embed_dim",
      "ibim_layers",
      "ibim_heads",
      "ibim_ffn_mult",
      "gim_dim",
      "behaviour_pool",
      "mlp",
      "mlp_activation",
      "dropout",
    ),
    sets=PAPER,
  ),
  "mian_no_ibim": _Entry("mian", "MIAN", {"use_ibim": False}, ("embed_dim", *_GIM, *_MIAN_TOWER)),
  "mian_no_iuim": _Entry("mian", "MIAN", {"use_iuim": False}, ("embed_dim", *_IBIM, *_GIM, *_MIAN_TOWER)),
  "mian_no_icim": _Entry("mian", "MIAN", {"use_icim": False}, ("embed_dim", *_IBIM, *_GIM, *_MIAN_TOWER)),
  "mian_no_iuim_icim": _Entry(
    "mian", "MIAN", {"use_iuim": False, "use_icim": False}, ("embed_dim", *_IBIM, *_GIM, *_MIAN_TOWER)
  ),
  "mian_no_gim": _Entry("mian", "MIAN", {"use_gim": False}, ("embed_dim", *_IBIM, *_MIAN_TOWER)),
}
BASELINES = ("lr", "wdl", "dcn", "deepfm", "xdeepfm", "din", "dien")  # the paper's Table 2 order
ABLATIONS = ("mian_no_iuim", "mian_no_icim", "mian_no_ibim", "mian_no_gim", "mian_no_iuim_icim")
DIEN_PARTS = ("dien_no_product", "dien_state_only", "dien_gru_attention", "dien_no_extractor")


def names() -> list[str]:
  return sorted(_REGISTRY)


def fields(name: str) -> tuple[str, ...]:
  """The ModelConfig fields model `name` reads (not `name` itself), in declaration order."""
  if name not in _REGISTRY:
    raise KeyError(name)
  return _REGISTRY[name].fields


def get(name: str, cfg: ModelConfig) -> nn.Module:
  if name not in _REGISTRY:
    raise KeyError(name)
  entry = _REGISTRY[name]
  factory = getattr(importlib.import_module(f"mian_jax.models.{entry.module}"), entry.cls)
  return functools.partial(factory, **entry.kwargs)(dataclasses.replace(cfg, **entry.sets))
