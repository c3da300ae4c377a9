"""DIN: Deep Interest Network (Zhou et al., KDD 2018), as its reference code (github.com/mouna99/dien).

Legend: B batch, T history length, J user fields, K context fields, D embedding width, Di item width.

w_t      = a(e_i, e_b^t)  DIN's local activation unit on [e_i, e_b^t, e_i - e_b^t, e_i * e_b^t]
           (sigmoid hidden layers cfg.attention_mlp), 0 at padding, NOT normalised (the paper)   [B, T]
interest = sum_t w_t e_b^t                                                                    [B, Di]
x        = [e_i; interest; s; e_i * s; e_u (every field); e_c (every field)], s = sum_t e_b^t (the
           reference's latest Model_DIN: [uid, item_eb, item_his_eb_sum, item_eb * item_his_eb_sum, att_fea];
           model.din_inputs=sum drops e_i * s (its earlier Model_DIN), =attention drops s too (FuxiCTR's DIN))
logit    = DiceMLP(cfg.mlp)(x)   (Dense -> Dice per layer, the reference's build_fcn_net with dice;
           model.mlp_activation=relu: Dense -> ReLU, FuxiCTR's DIN)
extras   = {"attention": w [B, T]}

Departures from the reference code: the user id enters as one more user field only where the data set
embeds it (data.embed_user_id); Dice evaluates with running moments (README, "The model zoo").
Against FuxiCTR's DIN (the Yelp peer of ../shared/data/yelp/PEER.md), besides the MLP input and
activation above: its attention unit is one hidden layer of 64 with Dice (here model.attention_mlp of
sigmoid layers, 80-40; `--set model.attention_mlp=64` gives the width, not Dice), and its embeddings start
at N(0, 1e-4) (here N(0, 0.05), every model). README "DIN beside FuxiCTR's" has the measured effects.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mian_jax.config import ModelConfig
from mian_jax.layers.dice import DiceMLP
from mian_jax.layers.embedding import Groups
from mian_jax.layers.mlp import MLP
from mian_jax.layers.target_attention import TargetAttention


class DIN(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, g: Groups, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    cfg = self.cfg
    b = g.item.shape[0]
    interest_bi, w_bt = TargetAttention(cfg.attention_mlp, name="attention")(g.item, g.behaviour, g.mask)
    sum_bi = g.behaviour.sum(1)  # padding is 0 already: the masked sum (the reference's item_his_eb_sum)
    history = {"reference": [sum_bi, g.item * sum_bi], "sum": [sum_bi], "attention": []}[cfg.din_inputs]
    x = jnp.concatenate([g.item, interest_bi, *history, g.user.reshape(b, -1), g.context.reshape(b, -1)], axis=-1)
    tower = DiceMLP if cfg.mlp_activation == "dice" else MLP
    return tower(cfg.mlp, cfg.dropout, name="mlp")(x, train), {"attention": w_bt}
