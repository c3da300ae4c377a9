"""The model registry: every model is a Flax module `model(groups, train) -> (logit [B], extras)`.

`extras` is a dict: attention weights by module (MIAN, DIN) and, for DIEN, `aux_loss` (added to the
loss by the trainer with weight `model.aux_loss_weight`). A model class that sets `linear_terms = True`
gets first-order weights per field in `groups.linear` (LR, Wide&Deep, DeepFM, xDeepFM).
`get(name, cfg)` builds one; `names()` lists them (shown by `launch.py --help`). Entries are
"module:factory" strings so that a model's file is imported only when it is used.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import flax.linen as nn

from mian_jax.config import ModelConfig

# name -> (module under mian_jax.models, class, keyword arguments)
_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "lr": ("lr", "LR", {}),
    "wdl": ("wdl", "WideDeep", {}),
    "dcn": ("dcn", "DCN", {}),
    "deepfm": ("deepfm", "DeepFM", {}),
    "xdeepfm": ("xdeepfm", "XDeepFM", {}),
    "din": ("din", "DIN", {}),
    "dien": ("dien", "DIEN", {}),
    "mian": ("mian", "MIAN", {}),
    "mian_no_ibim": ("mian", "MIAN", {"use_ibim": False}),
    "mian_no_iuim": ("mian", "MIAN", {"use_iuim": False}),
    "mian_no_icim": ("mian", "MIAN", {"use_icim": False}),
    "mian_no_iuim_icim": ("mian", "MIAN", {"use_iuim": False, "use_icim": False}),
    "mian_no_gim": ("mian", "MIAN", {"use_gim": False}),
}
BASELINES = ("lr", "wdl", "dcn", "deepfm", "xdeepfm", "din", "dien")  # the paper's Table 2 order
ABLATIONS = ("mian_no_iuim", "mian_no_icim", "mian_no_ibim", "mian_no_gim", "mian_no_iuim_icim")


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str, cfg: ModelConfig) -> nn.Module:
  if name not in _REGISTRY:
    raise KeyError(name)
  module, cls, kwargs = _REGISTRY[name]
  factory = getattr(importlib.import_module(f"mian_jax.models.{module}"), cls)
  return functools.partial(factory, **kwargs)(cfg)
