"""The model registry: every model is a Flax module `model(groups, train) -> (logit [B], extras)`.

`get(name, cfg)` builds one; `names()` lists them (shown by `launch.py --help`).
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn

from mian_jax.config import ModelConfig
from mian_jax.models.mian import MIAN

_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "mian": MIAN,
    "mian_no_ibim": functools.partial(MIAN, use_ibim=False),
    "mian_no_iuim": functools.partial(MIAN, use_iuim=False),
    "mian_no_icim": functools.partial(MIAN, use_icim=False),
    "mian_no_iuim_icim": functools.partial(MIAN, use_iuim=False, use_icim=False),
    "mian_no_gim": functools.partial(MIAN, use_gim=False),
}


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str, cfg: ModelConfig) -> nn.Module:
  if name not in _REGISTRY:
    raise KeyError(name)
  return _REGISTRY[name](cfg)
