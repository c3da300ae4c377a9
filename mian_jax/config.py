"""Typed run configuration and `--set a.b=c` overrides.

A run is described by one frozen-free tree of dataclasses (`Config`), built by an experiment file and
then overridden from the command line. Every override is checked against the field's annotated type;
`Literal[...]` fields list their valid choices in the error. `ConfigError` carries a one-line message
meant to be printed as `error: ...`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Literal


class ConfigError(ValueError):
  """A user mistake in the configuration; the message is one line saying what and how to fix it."""


@dataclasses.dataclass
class DataConfig:
  source: str = "commercial"  # which data set (mian_jax.data.SOURCES)
  dir: str = "data_cache"  # where generated / converted shards are cached (keyed by their parameters)
  scale: float = -1.0  # commercial data: 1.0 = 36M samples / 2.16M users; -1 = 1.0 with an accelerator, 0.01 on CPU
  max_len: int = 50  # behaviours kept per sample (the most recent ones)
  block_size: int = 128  # samples per ArrayRecord record; the per-process batch must be a multiple
  shard_samples: int = 262144  # samples per shard file (rounded to whole blocks)
  workers: int = 0  # grain worker processes for decoding; 0 = decode in a background thread
  prefetch: int = 4  # batches prefetched ahead of the step
  embed_user_id: bool = False  # feed the user id to the model (it is always stored, for gAUC)
  seed: int = 0  # generator seed (the data set, not the training order)
  days: int = 30  # commercial data: days covered; the last `test_days` are the test split
  test_days: int = 3
  min_positive_rating: int = 4  # movielens: a rating >= this is a positive (label 1)
  test_per_user: int = 1  # movielens: each user's last ratings held out as the test split
  # Model selection (best checkpoint, --eval / --predict / --export, sweep tables, early stopping) on:
  # holdout = a validation split carved from the training data before anything is fitted on it (per-user
  # sequence data: each user's last training sample(s); commercial: the last training day; custom: the
  # schema's `valid` files, else a seeded data.validation_fraction of the users); test = the test split
  # (the BARS x1 protocol, to compare with published BARS / FuxiCTR numbers); none = no selection (the
  # latest evaluation is the one reported).
  validation: Literal["holdout", "test", "none"] = "holdout"
  validation_fraction: float = 0.05  # custom data without `valid` files: the share of users held out
  max_bad_rows: int = 0  # converters: bad input rows skipped (counted, reported) before an error stops the run
  part_mb: float = 64.0  # converters: input MB per parallel part (one shard file per training part)
  schema: str = ""  # custom: the schema file (TOML) mapping the columns of the user's files to features
  # Ids outside a feature's vocabulary and non-finite numeric values met while reading shards: map = read
  # them as OOV id 0 / 0.0 and count them (reported at the end of the run); error = stop, naming them.
  oov: Literal["map", "error"] = "map"


@dataclasses.dataclass
class ModelConfig:
  name: str = "mian"  # a name from the model registry (`python launch.py --help` lists them)
  embed_dim: int = 18  # width D of every embedding table (DIN/DIEN reference default)
  ibim_layers: int = 1  # Pre-LN Transformer blocks over the behaviours
  ibim_heads: int = 2  # attention heads; the behaviour width must divide by it
  ibim_ffn_mult: int = 2  # FFN hidden width = mult x behaviour width
  ibim_encoder: Literal["pre_ln", "post_ln", "none"] = "pre_ln"  # IBIM sequence encoder
  # Recency-rank position added to the behaviours before IBIM's encoder (0 = the most recent behaviour,
  # so the same for any history length; beside the behaviour-age embedding where the data has ages).
  ibim_position: Literal["none", "learned", "sinusoidal"] = "none"
  # IBIM's pooling score: additive = tanh(w.[e_i; h_t] + b) (the paper's formula); target = DIN's
  # activation unit on [e_i, h_t, e_i - h_t, e_i * h_t] (hidden widths model.attention_mlp), softmax over
  # the real positions. Either way R_ibim = sum_t alpha_t [e_i; h_t].
  ibim_attention: Literal["additive", "target"] = "target"
  # How e_b (for GIM and the MLP) pools the behaviours: mean (over the real ones) or sum (as DIN / DIEN
  # do; it keeps how many behaviours there are).
  behaviour_pool: Literal["mean", "sum"] = "sum"
  gim_dim: int = 64  # GIM projects every r_l to this width before the weighted sum
  mlp: tuple[int, ...] = (200, 80)  # prediction MLP hidden widths
  mlp_activation: Literal["relu", "dice"] = "dice"  # mian: the MLP's hidden activation (Dice: DIN's, running moments)
  mlp_on_concat: bool = True  # feed [R_g; r_1..r_L] to the MLP (False = R_g only, the paper's literal form)
  dropout: float = 0.0  # dropout in the MLP (train only)
  # The zoo's own fields (each model reads only its own).
  cross_layers: int = 3  # dcn: cross layers x_{l+1} = x_0 x_l^T w_l + b_l + x_l
  cin_layers: tuple[int, ...] = (100, 100)  # xdeepfm: feature maps per CIN layer
  attention_mlp: tuple[int, ...] = (80, 40)  # din / dien: hidden widths of the attention unit (DIN reference)
  gru_dim: int = 0  # dien: GRU / AUGRU state width; 0 = the behaviour width (DIEN reference: 2 x 18 = 36)
  aux_loss_weight: float = 1.0  # dien: weight of the interest extractor's auxiliary loss (DIEN reference: 1)


@dataclasses.dataclass
class TrainConfig:
  batch_size: int = 1024  # global batch (all processes and devices together)
  steps: int = 0  # optimisation steps; 0 = run `epochs` epochs
  epochs: int = 2
  seed: int = 0  # parameter init, data order and dropout
  learning_rate: float = 1e-3  # peak learning rate of the dense network and the tables (Adam)
  lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays to 0 over the run's steps
  weight_decay: float = 0.0  # decoupled weight decay on the dense network (AdamW); tables are not decayed
  # How the embedding tables learn: adam = dense Adam over the whole table (the reference); lazy_adam /
  # adagrad / sgd update only the rows a batch touches (mian_jax/train/optim.py).
  embedding_optimizer: Literal["adam", "lazy_adam", "adagrad", "sgd"] = "adam"
  # bfloat16: the forward and backward pass compute in bf16; parameters, optimizer state, attention
  # softmaxes and the loss stay float32.
  compute_dtype: Literal["float32", "bfloat16"] = "float32"
  mesh: str = ""  # "" = data parallel over every device; "data=N,model=M": tables split by rows over `model`
  eval_every: int = 0  # steps between evaluations (validation and test); 0 = once per epoch (and at the end)
  checkpoint_every: int = 200  # steps between checkpoints (also at every eval and at the end)
  log_every: int = 50  # steps between training-metric fetches
  keep_checkpoints: int = 3  # latest checkpoints kept (the best by validation AUC is kept as well)
  eval_batch_size: int = 4096  # rows per evaluation / prediction batch (global); scores do not depend on it
  # Stop when the validation AUC has not improved for this many evaluations (0 = never stop early).
  early_stop_patience: int = 0
  # Resume the data order from its beginning instead of the checkpoint's position (needed only when the
  # position cannot be mapped to this run's batch size; see pipeline.resume_from).
  reset_data_position: bool = False
  # A step whose loss or gradients are not finite is never applied; stop = end the run naming the step and
  # its batch's shard records (the last checkpoint is kept); skip_batch = go on, counting such batches.
  on_nonfinite: Literal["stop", "skip_batch"] = "stop"


@dataclasses.dataclass
class SweepConfig:
  # Devices each trial of `--sweep` gets (its own process sees only those): 0 = one per trial on GPUs and
  # TPUs, all of them (trials one after another) on CPU. Trials run in parallel on disjoint groups.
  devices_per_trial: int = 0
  seeds: int = 0  # > 0: every trial that does not set train.seed runs with seeds 0..seeds-1


@dataclasses.dataclass
class Config:
  experiment: str = ""
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  sweep: SweepConfig = dataclasses.field(default_factory=SweepConfig)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _keys(obj: Any, prefix: str = "") -> list[str]:
  out = []
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    if dataclasses.is_dataclass(value):
      out += _keys(value, f"{prefix}{f.name}.")
    else:
      out.append(prefix + f.name)
  return out


def _parse(key: str, raw: str, hint: Any) -> Any:
  origin = typing.get_origin(hint)
  if origin is Literal:
    choices = typing.get_args(hint)
    if raw not in choices:
      raise ConfigError(f"--set {key}={raw}: must be one of {', '.join(map(str, choices))}")
    return raw
  if hint is bool:
    low = raw.lower()
    if low in ("1", "true", "yes"):
      return True
    if low in ("0", "false", "no"):
      return False
    raise ConfigError(f"--set {key}={raw}: expected true or false")
  if hint in (int, float):
    try:
      return hint(raw) if hint is float else int(raw)
    except ValueError:
      raise ConfigError(f"--set {key}={raw}: expected {hint.__name__}") from None
  if origin is tuple:
    parts = [p for p in raw.replace("-", ",").split(",") if p.strip()]
    try:
      return tuple(int(p) for p in parts)
    except ValueError:
      raise ConfigError(f"--set {key}={raw}: expected integers joined by ',' or '-' (e.g. 200-80)") from None
  return raw


def apply_override(config: Config, assignment: str) -> None:
  """Applies one `a.b=c` override in place, type-checked against the dataclass annotation."""
  if "=" not in assignment:
    raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. --set train.batch_size=512")
  key, raw = assignment.split("=", 1)
  key = key.strip()
  parts = key.split(".")
  node: Any = config
  for i, part in enumerate(parts):
    names = [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []
    if part not in names:
      valid = ", ".join(_keys(config))
      raise ConfigError(f"--set {key}: unknown key; valid keys are {valid}")
    if i == len(parts) - 1:
      if dataclasses.is_dataclass(getattr(node, part)):
        raise ConfigError(f"--set {key}: is a section; set one of its fields, e.g. {key}.{_keys(getattr(node, part))[0]}")
      hints = typing.get_type_hints(type(node))
      setattr(node, part, _parse(key, raw.strip(), hints[part]))
    else:
      node = getattr(node, part)


def apply_overrides(config: Config, assignments: list[str]) -> Config:
  for assignment in assignments:
    apply_override(config, assignment)
  validate(config)
  return config


def validate(config: Config) -> None:
  d, t, m = config.data, config.train, config.model
  checks = [
      (d.max_len >= 1, "data.max_len must be >= 1"),
      (1 <= d.block_size <= 65536, "data.block_size must be in 1..65536"),
      (d.workers >= 0, "data.workers must be >= 0"),
      (t.batch_size >= 1, "train.batch_size must be >= 1"),
      (t.steps >= 0, "train.steps must be >= 0 (0 = run train.epochs epochs)"),
      (t.epochs >= 1, "train.epochs must be >= 1"),
      (t.learning_rate > 0, "train.learning_rate must be > 0"),
      (t.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
      (t.log_every >= 1, "train.log_every must be >= 1"),
      (t.eval_every >= 0, "train.eval_every must be >= 0"),
      (m.embed_dim >= 1, "model.embed_dim must be >= 1"),
      (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
      (0 <= t.seed < 2**31, "train.seed must be in 0..2^31-1"),
      (config.sweep.devices_per_trial >= 0, "sweep.devices_per_trial must be >= 0 (0 = automatic)"),
      (config.sweep.seeds >= 0, "sweep.seeds must be >= 0"),
      (0.0 < d.validation_fraction < 1.0, "data.validation_fraction must be in (0, 1)"),
      (t.early_stop_patience >= 0, "train.early_stop_patience must be >= 0 (0 = off)"),
      (t.early_stop_patience == 0 or d.validation != "none",
       "train.early_stop_patience needs a validation split; set data.validation=holdout or test"),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
