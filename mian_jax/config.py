"""Typed run configuration and `--set a.b=c` overrides.

A run is described by one frozen-free tree of dataclasses (`Config`), built by an experiment file and
then overridden from the command line. Every override is checked against the field's annotated type;
`Literal[...]` fields list their valid choices in the error. `ConfigError` carries a one-line message
meant to be printed as `error: ...`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from typing import Any, Literal

from mian_jax.errors import ConfigError  # the configuration's error; importable from here too


# Size limits (`validate`): far above any real CTR run, low enough that a typo (an extra digit or
# three) is an error line instead of a multi-terabyte allocation or a run that cannot fit anywhere.
MAX_LEN = 100_000  # data.max_len: behaviours kept per sample
MAX_STEPS = 10**10  # train.steps: at a million steps a second, about four months
MAX_EPOCHS = 10**6  # train.epochs
MAX_BATCH = 1 << 24  # train.batch_size, train.eval_batch_size: 16,777,216 samples
# One batch's history: batch x data.max_len entries per sequence feature (int32 ids; the embedded
# sequence is model.embed_dim times larger). 2^28 = 268,435,456 entries = 1 GiB of ids per sequence
# feature, for the training and the evaluation batch alike.
MAX_BATCH_ENTRIES = 1 << 28
MAX_EMBED_DIM = 4096  # model.embed_dim
MAX_WIDTH = 65536  # every other layer width (model.gim_dim, model.mlp, model.cin_layers, ...)
AUX_ENCODERS = ("gru", "gru_pre_ln", "causal")  # IBIM encoders whose h_t has read behaviours <= t only
MAX_LAYERS = 64  # stacked layers (model.ibim_layers, model.cross_layers, entries of model.mlp, ...)


@dataclasses.dataclass
class DataConfig:
  source: str = "commercial"  # which data set (mian_jax.data.SOURCES)
  # The data set's input folder: the files a converter reads (movielens, amazon, custom), or the folder
  # the commercial generator writes its data set into (cached there by its parameters). Converted data
  # sets are cached under $MIAN_JAX_CACHE (default data_cache/).
  dir: str = "data_cache"
  scale: float = (
    -1.0
  )  # commercial (generated) data only: 1.0 = 36M samples / 2.16M users; -1 = 1.0 with an accelerator, 0.03 on CPU
  # Behaviours kept per sample (the most recent ones): 1..MAX_LEN (100,000), and train.batch_size x max_len
  # and train.eval_batch_size x max_len at most MAX_BATCH_ENTRIES (2^28) history entries per batch.
  max_len: int = 50
  # Samples per ArrayRecord record (1..65536); train.batch_size must be a multiple of it (per process:
  # see check_batch).
  block_size: int = 128
  shard_samples: int = 262144  # samples per shard file (rounded to whole blocks)
  workers: int = 0  # grain worker processes for decoding; 0 = decode in threads of the training process
  threads: int = 0  # decoding threads (workers=0); 0 = one per host core, at most 4 (measured best: README)
  prefetch: int = 4  # decoded batches kept ready ahead of the step (at least one per thread)
  device_prefetch: int = 2  # batches placed on the devices ahead of the step (copies overlap it); 0 = when asked
  # Where the splits live while a run trains and evaluates: host = read from the shards batch by batch
  # (decoded by data.threads, placed data.device_prefetch ahead); device = decoded once into columns held in
  # every device's memory, each batch gathered inside the jitted step from its row indices (the same batches
  # to the bit); auto = device when the splits take at most half of the devices' free memory (the host's
  # available memory on CPU), else host. README, "The input path".
  placement: Literal["auto", "host", "device"] = "auto"
  embed_user_id: bool = False  # feed the user id to the model (it is always stored, for gAUC)
  seed: int = 0  # generator seed (the data set, not the training order)
  days: int = 30  # commercial data: days covered; the last `test_days` are the test split
  test_days: int = (
    3  # commercial data: the last days, the test split (data.validation=holdout: the day before them validates)
  )
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
  # Every model receives all of these but reads only some: models.fields(name) lists each model's (declared
  # per registry entry in mian_jax/models/__init__.py, checked by tests/test_model_fields.py). A run's
  # identity holds name and those fields only, so a checkpoint resumes under a change of any other field.
  # Below, "mian" includes its ablations except the one without the module named (mian_no_ibim, mian_no_gim).
  name: str = "mian"  # a name from the model registry (`python launch.py --help` lists them)
  # Width D of every embedding table (DIN/DIEN reference default); 1..MAX_EMBED_DIM (4096). Every model
  # (the trainer builds the tables: LR's too).
  embed_dim: int = 18
  # mian: IBIM's fields (ibim_*). The defaults of MIAN's options are the configuration chosen on the validation
  # splits of Yelp, MovieLens-100k and the commercial data taken together (docs/results/mian-default/): IBIM's
  # encoder a GRU trained by DIEN's auxiliary loss, and the candidate x history product. The paper's model,
  # whatever these fields say, is model.name=mian_paper (models/__init__.py: PAPER).
  ibim_layers: int = 1  # Pre-LN Transformer blocks over the behaviours
  ibim_heads: int = 2  # attention heads; the behaviour width must divide by it
  ibim_ffn_mult: int = 2  # FFN hidden width = mult x behaviour width
  # How the Transformer's attention is computed (the same outputs every way): einsum = two einsums and a
  # float32 softmax (the CPU's fastest); xla = jax.nn.dot_product_attention; cudnn = its cuDNN kernel (GPU,
  # bfloat16 / float16 only), each head zero-padded to a multiple of 8 wide; auto = einsum on CPU, xla
  # elsewhere (cudnn is chosen by name until a GPU has measured it).
  ibim_attention_kernel: Literal["auto", "einsum", "xla", "cudnn"] = "auto"
  # IBIM sequence encoder: pre_ln / post_ln Transformer; causal = Pre-LN, each behaviour attending to itself
  # and earlier ones only; gru = DIEN's GRU (state width = behaviour width); gru_pre_ln = the GRU, then the
  # Pre-LN Transformer over its states; none = the behaviours themselves. The default's auxiliary loss needs
  # gru, gru_pre_ln or causal: with another encoder set model.ibim_aux_loss=false as well.
  ibim_encoder: Literal["pre_ln", "post_ln", "causal", "gru", "gru_pre_ln", "none"] = "gru"
  # The encoder's output at the last real behaviour (DIEN's "current interest") as one more GIM / MLP input.
  ibim_last_state: bool = False
  # The candidate appended to the behaviours as one more token of the encoder (BST); its output is one more
  # GIM / MLP input (IBIM still pools the behaviours' outputs only).
  ibim_candidate_token: bool = False
  # DIEN's auxiliary loss on IBIM's encoder states (layers/auxiliary.py): h_t scores the next real behaviour against
  # another behaviour of the batch, weighted by model.aux_loss_weight (training only). It needs states that
  # have not read the behaviour they score: ibim_encoder gru, gru_pre_ln (the GRU's states) or causal.
  ibim_aux_loss: bool = True
  # Recency-rank position added to the behaviours before IBIM's encoder (0 = the most recent behaviour,
  # so the same for any history length; beside the behaviour-age embedding where the data has ages).
  ibim_position: Literal["none", "learned", "sinusoidal"] = "none"
  # IBIM's pooling score: additive = tanh(w.[e_i; h_t] + b) (the paper's formula); target = DIN's
  # activation unit on [e_i, h_t, e_i - h_t, e_i * h_t] (hidden widths model.attention_mlp), softmax over
  # the real positions. Either way R_ibim = sum_t alpha_t [e_i; h_t].
  ibim_attention: Literal["additive", "target"] = "target"
  # IBIM's softmax gets a learned null position (logit b): alpha_t = exp(s_t) / (exp(b) + sum exp(s_t')), so
  # the weights may sum to less than 1 and a history with little relevant to the candidate pools to little.
  ibim_sink: bool = False
  # mian: how e_b (for GIM and the MLP) pools the behaviours: mean (over the real ones) or sum (as DIN / DIEN
  # do; it keeps how many behaviours there are).
  behaviour_pool: Literal["mean", "sum"] = "sum"
  gim_dim: int = 64  # mian: GIM projects every r_l to this width before the weighted sum
  # mian: element-wise products of the candidate with what it meets, as more GIM / MLP inputs: history =
  # e_i * sum_t e_b^t (DIEN's and DIN's MLP input); fields = that, and the candidate (mapped linearly to
  # the field width) times IUIM's and ICIM's pooled fields; none = the paper's inputs only.
  candidate_product: Literal["none", "history", "fields"] = "history"
  mlp: tuple[int, ...] = (200, 80)  # prediction MLP hidden widths (every model but lr)
  # mian, din: the MLP's hidden activation (Dice: DIN's, running moments; relu: FuxiCTR's DIN)
  mlp_activation: Literal["relu", "dice"] = "dice"
  mlp_on_concat: bool = True  # mian: feed [R_g; r_1..r_L] to the MLP (False = R_g only, the paper's literal form)
  dropout: float = 0.0  # dropout in the MLP (train only; every model but lr)
  # The zoo's own fields (each model reads only its own).
  cross_layers: int = 3  # dcn: cross layers x_{l+1} = x_0 x_l^T w_l + b_l + x_l
  cin_layers: tuple[int, ...] = (100, 100)  # xdeepfm: feature maps per CIN layer
  # din / dien / mian (ibim_attention=target): hidden widths of DIN's attention unit (DIN reference)
  attention_mlp: tuple[int, ...] = (80, 40)
  # din: the MLP input beside e_i, the attention-pooled interest, e_u and e_c: reference = s and e_i * s,
  # s = sum_t e_b^t (the reference code's latest Model_DIN); sum = s only (its earlier Model_DIN);
  # attention = neither (FuxiCTR's DIN and the DIN paper).
  din_inputs: Literal["reference", "sum", "attention"] = "reference"
  gru_dim: int = 0  # dien: GRU / AUGRU state width; 0 = the behaviour width (DIEN reference: 2 x 18 = 36)
  # dien (and mian with ibim_aux_loss): weight of the interest extractor's auxiliary loss (DIEN reference: 1)
  aux_loss_weight: float = 1.0


@dataclasses.dataclass
class TrainConfig:
  # Global batch (all processes and devices together): 1..MAX_BATCH (2^24), a multiple of data.block_size x
  # processes that splits evenly over the devices (check_batch), batch x data.max_len <= 2^28.
  batch_size: int = 1024
  steps: int = 0  # optimisation steps; 0 = run `epochs` epochs
  epochs: int = 2  # passes over the training data when train.steps is 0
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
  # How the step reads the embedding tables (layers/embedding.py; the parameters and results are the same):
  # per_field = one gather per field; batched = one gather per table width over all the fields' ids (the
  # tables concatenated with row offsets); auto = batched on GPU / TPU unless the tables are split over a
  # `model` axis, per_field on CPU.
  embedding_lookup: Literal["auto", "per_field", "batched"] = "auto"
  # Tables of at most this many rows are read as a one-hot matmul (its gradient a matmul, not a scatter-add);
  # -1 = the rule measured for the device (embedding.ONE_HOT_ROWS), 0 = never; at most 4096 (the one-hot
  # matrix has a column per row: at batch 8192 x 50 ids, 4,096 rows are 6.7 GB).
  one_hot_rows: int = -1
  mesh: str = ""  # "" = data parallel over every device; "data=N,model=M": tables split by rows over `model`
  # Devices the run uses: 0 = every device of every process; N = the first N devices of this process (one
  # process only), e.g. to leave the others to another job. train.mesh then counts these N.
  devices: int = 0
  eval_every: int = 0  # steps between evaluations (validation and test); 0 = once per epoch (and at the end)
  # Training steps per jitted call (a scan over the call's batches): the host dispatches once per call. Before
  # a log, evaluation, checkpoint or profile step and the last step the steps go one per call, so every event
  # falls where it does with 1 (two programs are compiled: k steps and one); a SIGTERM / Ctrl-C is answered
  # when the call in flight ends. 1..1024. 16, measured on 2 CPU cores (README, "The input path"): at batch
  # 8192 with the data on the device, LR 1.51M / 1.67M / 1.89M samples/s at 1 / 4 / 16 steps per call and
  # DeepFM 113k / 171k / 218k; MIAN at batch 1024 through launch.py 8.7k at 1, 9.1k at 16.
  steps_per_call: int = 16
  checkpoint_every: int = 200  # steps between checkpoints (also at every eval and at the end)
  log_every: int = (
    50  # steps between training-metric fetches (metrics.jsonl, TensorBoard; a progress line in a log file)
  )
  keep_checkpoints: int = 3  # latest checkpoints kept (the best by validation AUC is kept as well)
  # Rows per evaluation / prediction batch (global; scores do not depend on it): 1..MAX_BATCH (2^24), and
  # eval_batch_size x data.max_len <= 2^28.
  eval_batch_size: int = 4096
  # Stop when the validation AUC has not improved for this many evaluations (0 = never stop early).
  early_stop_patience: int = 0
  # Resume the data order from its beginning instead of the checkpoint's position (needed only when the
  # position cannot be mapped to this run's batch size; see pipeline.resume_from).
  reset_data_position: bool = False
  # A step whose loss or gradients are not finite is never applied; stop = end the run naming the step and
  # its batch's shard records (the last checkpoint is kept); skip_batch = go on, counting such batches.
  on_nonfinite: Literal["stop", "skip_batch"] = "stop"
  # "A:B": a jax.profiler trace of training steps A..B (1-based, both included) into <workdir>/tensorboard,
  # for TensorBoard's profile plugin; "" = none.
  profile_steps: str = ""
  # JAX's persistent compilation cache: compiled steps are kept in this folder (~ expanded) and reused by
  # later runs of the same program (a rerun, a sweep's other seeds); "" = off. JAX_COMPILATION_CACHE_DIR,
  # when set, wins.
  compilation_cache: str = "~/.cache/mian_jax/xla"


@dataclasses.dataclass
class SweepConfig:
  # Devices each trial of `--sweep` gets (its own process sees only those): 0 = one per trial on GPUs and
  # TPUs, all of them (trials one after another) on CPU. Trials run in parallel on disjoint groups.
  devices_per_trial: int = 0
  seeds: int = 0  # > 0: every trial that does not set train.seed runs with seeds 0..seeds-1


@dataclasses.dataclass
class Config:
  experiment: str = ""  # --experiment NAME[:VARIANT] (experiments/NAME.py); not a --set key
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


def did_you_mean(word: str, choices: list[str]) -> str:
  """` (did you mean X?)` naming the closest of `choices` (difflib, ignoring case), or "" when none is close."""
  by_lower = {c.lower(): c for c in choices}
  close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
  return f" (did you mean {by_lower[close[0]]}?)" if close else ""


def _unknown_key(config: Config, key: str) -> ConfigError:
  """The error for an unknown `--set` key: the closest field of its section, else of any section (e.g.
  model.batch_size -> train.batch_size), else the section's keys, else the sections."""
  keys = [k for k in _keys(config) if k != "experiment"]
  section, _, name = key.rpartition(".")
  for pool, cutoff in (([k for k in keys if k.rpartition(".")[0] == section], 0.6), (keys, 0.8)):
    close = difflib.get_close_matches(name.lower(), sorted({k.rpartition(".")[2] for k in pool}), n=1, cutoff=cutoff)
    if close:
      return ConfigError(
        f"--set {key}: unknown key (did you mean {' or '.join(k for k in pool if k.rpartition('.')[2] == close[0])}?)"
      )
  where = "; --print-config lists every key with its description"
  mine = [k.split(".", 1)[1] for k in keys if k.startswith(section + ".")]
  if mine:
    return ConfigError(f"--set {key}: unknown key; the {section}.* keys are {', '.join(mine)}{where}")
  sections = sorted({k.split(".")[0] for k in keys})
  return ConfigError(f"--set {key}: unknown key; keys start with {', '.join(s + '.' for s in sections)}{where}")


def apply_override(config: Config, assignment: str) -> None:
  """Applies one `a.b=c` override in place, type-checked against the dataclass annotation."""
  if "=" not in assignment:
    raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. --set train.batch_size=512")
  key, raw = assignment.split("=", 1)
  key = key.strip()
  if key == "experiment":
    raise ConfigError("--set experiment: the experiment is chosen with --experiment NAME[:VARIANT], not --set")
  parts = key.split(".")
  node: Any = config
  for i, part in enumerate(parts):
    names = [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []
    if part not in names:
      raise _unknown_key(config, key)
    if i == len(parts) - 1:
      if dataclasses.is_dataclass(getattr(node, part)):
        raise ConfigError(
          f"--set {key}: is a section; set one of its fields, e.g. {key}.{_keys(getattr(node, part))[0]}"
        )
      hints = typing.get_type_hints(type(node))
      setattr(node, part, _parse(key, raw.strip(), hints[part]))
    else:
      node = getattr(node, part)


def apply_overrides(config: Config, assignments: list[str]) -> Config:
  for assignment in assignments:
    apply_override(config, assignment)
  validate(config)
  return config


def check_batch(batch_size: int, block_size: int, devices: int = 1, processes: int = 1) -> None:
  """ConfigError unless the global batch `batch_size` (train.batch_size) can be read and split: every
  process reads whole records of `block_size` samples (the data's block size, data.block_size), so the
  batch must be a multiple of block_size x processes, and it must split evenly over all `devices`.
  The valid batch sizes are the multiples of lcm(block_size x processes, devices)."""
  if block_size < 1 or devices < 1 or processes < 1:
    raise ValueError(f"check_batch: block_size={block_size}, devices={devices}, processes={processes} must be >= 1")
  unit = math.lcm(block_size * processes, devices)
  if batch_size >= 1 and batch_size % unit == 0:
    return
  why = [f"every process reads whole records of data.block_size={block_size} samples"]
  if processes > 1:
    why[0] += f" ({processes} processes: {block_size * processes} samples per batch at least)"
  if devices > 1:
    why.append(f"the batch splits evenly over {devices} devices")
  if batch_size < unit:
    examples = f"{unit}, {2 * unit}, {4 * unit}"
  else:  # the multiples either side of it
    examples = f"{batch_size // unit * unit} or {(batch_size // unit + 1) * unit}"
  raise ConfigError(
    f"train.batch_size={batch_size} must be a multiple of {unit}: {' and '.join(why)}; use "
    f"{examples}, or change data.block_size (the data is then converted again)"
  )


def _bounds(key: str, value: Any, low: float, high: float, unit: str = "") -> str | None:
  """The message for `value` of `key` outside [low, high] (or not finite), else None."""
  if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
    return f"{key}={value} is out of range: it must be in {low:,}..{high:,}{unit}"
  return None


def _sizes(config: Config) -> str | None:
  """The first size outside its range (at least 0 or 1; at most MAX_* above), as a message naming the key and
  the range: the one place these bounds are checked (validate calls it)."""
  d, t, m = config.data, config.train, config.model
  for key, value, low, high, unit in (
    ("data.max_len", d.max_len, 1, MAX_LEN, " behaviours per sample"),
    ("data.block_size", d.block_size, 1, 65536, " samples per record"),
    ("train.batch_size", t.batch_size, 1, MAX_BATCH, " samples"),
    ("train.eval_batch_size", t.eval_batch_size, 1, MAX_BATCH, " samples"),
    ("model.embed_dim", m.embed_dim, 1, MAX_EMBED_DIM, ""),
    ("model.gim_dim", m.gim_dim, 1, MAX_WIDTH, ""),
    ("model.gru_dim", m.gru_dim, 0, MAX_WIDTH, " (0 = the behaviour width)"),
    ("model.ibim_layers", m.ibim_layers, 0, MAX_LAYERS, ""),
    ("model.ibim_heads", m.ibim_heads, 1, MAX_WIDTH, ""),
    ("model.ibim_ffn_mult", m.ibim_ffn_mult, 1, MAX_LAYERS, ""),
    ("model.cross_layers", m.cross_layers, 0, MAX_LAYERS, ""),
    ("data.shard_samples", d.shard_samples, 1, 1 << 31, ""),
    ("train.steps", t.steps, 0, MAX_STEPS, " (0 = run train.epochs epochs)"),
    ("train.epochs", t.epochs, 1, MAX_EPOCHS, ""),
    ("data.workers", d.workers, 0, 1024, ""),
    ("data.prefetch", d.prefetch, 0, 1024, ""),
    ("data.threads", d.threads, 0, 1024, " (0 = one per host core, at most 4)"),
    ("data.device_prefetch", d.device_prefetch, 0, 64, ""),
    ("train.keep_checkpoints", t.keep_checkpoints, 1, 1 << 20, ""),
    ("train.steps_per_call", t.steps_per_call, 1, 1024, ""),
    ("train.one_hot_rows", t.one_hot_rows, -1, 4096, " (-1 = the rule measured for the device, 0 = never)"),
  ):
    message = _bounds(key, value, low, high, unit)
    if message:
      return message
  for key, widths in (
    ("model.mlp", m.mlp),
    ("model.cin_layers", m.cin_layers),
    ("model.attention_mlp", m.attention_mlp),
  ):
    if len(widths) > MAX_LAYERS:
      return f"{key} has {len(widths)} layers; at most {MAX_LAYERS}"
    for width in widths:
      if not 1 <= width <= MAX_WIDTH:
        return (
          f"{key}={'-'.join(map(str, widths))}: width {width} is out of range; every width must be in 1..{MAX_WIDTH:,}"
        )
  for key, batch in (("train.batch_size", t.batch_size), ("train.eval_batch_size", t.eval_batch_size)):
    if batch * d.max_len > MAX_BATCH_ENTRIES:
      return (
        f"{key} x data.max_len = {batch:,} x {d.max_len:,} = {batch * d.max_len:,} history entries per batch, "
        f"over the limit 2^28 = {MAX_BATCH_ENTRIES:,} (1 GiB of ids per sequence feature); lower {key} or "
        f"data.max_len"
      )
  return None


def profile_range(spec: str) -> tuple[int, int] | None:
  """(first, last) of train.profile_steps "A:B", or None when it is not 1 <= A <= B."""
  first, _, last = spec.partition(":")
  if not (first.strip().isdigit() and last.strip().isdigit()):
    return None
  first_i, last_i = int(first), int(last)
  return (first_i, last_i) if 1 <= first_i <= last_i else None


def validate(config: Config) -> None:
  d, t, m = config.data, config.train, config.model
  floats = [
    ("data.part_mb", d.part_mb),
    ("data.validation_fraction", d.validation_fraction),
    ("data.scale", d.scale),
    ("train.learning_rate", t.learning_rate),
    ("train.weight_decay", t.weight_decay),
    ("model.dropout", m.dropout),
    ("model.aux_loss_weight", m.aux_loss_weight),
  ]
  for key, value in floats:
    if not math.isfinite(value):
      raise ConfigError(f"{key}={value} must be a finite number")
  checks = [
    (t.learning_rate > 0, "train.learning_rate must be > 0"),
    (t.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
    (t.log_every >= 1, "train.log_every must be >= 1"),
    (t.eval_every >= 0, "train.eval_every must be >= 0"),
    (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
    (0 <= t.seed < 2**31, "train.seed must be in 0..2^31-1"),
    (t.devices >= 0, "train.devices must be >= 0 (0 = every device)"),
    (config.sweep.devices_per_trial >= 0, "sweep.devices_per_trial must be >= 0 (0 = automatic)"),
    (config.sweep.seeds >= 0, "sweep.seeds must be >= 0"),
    (0.0 < d.validation_fraction < 1.0, "data.validation_fraction must be in (0, 1)"),
    (t.early_stop_patience >= 0, "train.early_stop_patience must be >= 0 (0 = off)"),
    (
      t.early_stop_patience == 0 or d.validation != "none",
      "train.early_stop_patience needs a validation split; set data.validation=holdout or test",
    ),
    (d.max_bad_rows >= 0, "data.max_bad_rows must be >= 0"),
    (d.part_mb > 0, "data.part_mb must be > 0"),
    (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
    (m.aux_loss_weight >= 0, "model.aux_loss_weight must be >= 0"),
    (
      not m.ibim_aux_loss or m.ibim_encoder in AUX_ENCODERS,
      f"model.ibim_aux_loss=true needs model.ibim_encoder in {', '.join(AUX_ENCODERS)} (with "
      f"{m.ibim_encoder} a behaviour's state has read the next behaviour it would score); set one of them, "
      f"or model.ibim_aux_loss=false",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  if t.profile_steps and profile_range(t.profile_steps) is None:
    raise ConfigError(
      f"train.profile_steps={t.profile_steps}: expected FIRST:LAST steps, 1 <= FIRST <= LAST (e.g. "
      f"10:15), or empty for none"
    )
  too_big = _sizes(config)
  if too_big:
    raise ConfigError(too_big)
  # Every process reads whole records: the batch must be a multiple of the block size whatever the
  # devices (the trainer checks it again with its device and process counts: check_batch).
  check_batch(t.batch_size, d.block_size)
