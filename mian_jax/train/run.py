"""A run, assembled in one place: `Run.build(config)` and `Run.restore(config, workdir)`.

A Run owns what every use of a trained or training model needs: the data source, the mesh, the model,
the optimizer, the state's shapes and shardings, the jitted train / eval steps, the checkpoints of a
workdir and `evaluate()`. The trainer (loop.py), --eval / --predict (predict.py), --export, --plot, the
tests and the benchmarks all build their runs here; nothing else assembles these pieces.

- `Run.build(config)` opens (generates / converts) the data once per host group (process 0 first),
  resolves data.scale on a copy of the config (the caller's config is never changed) and checks the batch
  against the data's block size and the device count before anything is compiled.
- `Run.restore(config, workdir)` also restores the best checkpoint (the latest when none was evaluated),
  falling back past unreadable ones (`restore_first_readable`).
- `evaluate(params, split)` is exact: every row once, padding dropped, AUC / gAUC (grouped by the raw
  user key, `Source.group_key`) / logloss over the whole split, gathered from every process.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mian_jax import data as data_lib
from mian_jax import distributed, interrupts, metrics as metrics_lib, models, progress
from mian_jax.config import Config, check_batch
from mian_jax.data import pipeline, resident, shards
from mian_jax.errors import ConfigError, DataError, Diverged, RunError
from mian_jax.layers import embedding
from mian_jax.schema import FeatureSchema
from mian_jax.train import on_device, optim, partition, state as state_lib, step as step_lib, workdir as workdir_lib
from mian_jax.train.checkpoint import CheckpointMismatch, CheckpointUnreadable, Checkpoints, abstract, echoes_dropped

METRICS = ("auc", "gauc", "logloss")
SELECTED_ON = {"holdout": "valid", "test": "test", "none": None}  # data.validation -> the split that selects


def resolved(config: Config) -> tuple[Config, str | None]:
  """(a copy of `config` with data.scale < 0 resolved for a generated data set: full scale with an
  accelerator, 3% on CPU; the note saying so or None). Other data sets do not read data.scale.

  3% on CPU: at 1% (310k training samples) MIAN's commercial run ends 0.020 below the data's Bayes AUC,
  a gap set by the sample size, not the model; at 3% (938k) it ends within 0.015 of it, in about 10
  minutes on 2 cores (README, "The commercial data set")."""
  config = copy.deepcopy(config)
  if config.data.scale >= 0 or not data_lib.source_for(config.data).generated:
    return config, None
  if jax.default_backend() == "cpu":
    config.data.scale = 0.03
    return config, "note: CPU only, so data.scale=0.03 (1.08M samples); full scale: --set data.scale=1.0"
  config.data.scale = 1.0
  return config, None


def use_compilation_cache(folder: str) -> str | None:
  """Turns JAX's persistent compilation cache on in `folder` (train.compilation_cache, ~ expanded), before
  anything is compiled; JAX_COMPILATION_CACHE_DIR, when set, wins (JAX reads it itself); "" = off. Returns
  the folder in use. A rerun of MIAN's full-scale step then loads it instead of compiling it again
  (measured: README, "Speed and scale")."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  if not folder:
    return None
  path = os.path.expanduser(folder)
  jax.config.update("jax_compilation_cache_dir", path)
  return path


def open_source(config: Config) -> pipeline.Source:
  """Process 0 generates or converts the data set; the others wait for it, then open the cached result
  (or stop with process 0's error)."""
  try:
    with interrupts.phase("building the data set"):
      src = distributed.process_zero_first("building the data set", lambda: data_lib.open_source(config.data))
  except distributed.ProcessZeroFailed as e:
    raise RunError(str(e)) from None
  with interrupts.phase("checking the data set's files"):  # every split, before anything trains
    shards.verify(src.directory, src.meta)
  return src


def make_mesh(config: Config) -> Mesh:
  """The run's mesh (train.mesh); a bad spec is a ConfigError."""
  try:
    return partition.make_mesh(partition.first_devices(config.train.devices), spec=config.train.mesh)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def check_devices(config: Config) -> Mesh:
  """The run's mesh, with train.mesh and both batch sizes checked against the devices (ConfigError): before
  any data is built (minutes at full scale) or any folder made."""
  mesh = make_mesh(config)
  check_batch(config.train.batch_size, config.data.block_size, mesh.devices.size, jax.process_count())
  partition.per_process_batch(config.train.eval_batch_size, mesh, "train.eval_batch_size")
  return mesh


def check_splits(config: Config, src: pipeline.Source) -> None:
  """Empty splits are found out before anything is compiled or trained (a test file holding only a header)."""
  if src.rows("test") == 0:
    raise RunError(
      f"{src.directory} has no test rows (the test files are empty or hold only a header); give test "
      f"data with at least one row of each label"
    )
  if src.rows("train") == 0:
    raise RunError(
      f"{src.directory} has no training rows (each shard keeps whole blocks of data.block_size="
      f"{config.data.block_size} samples only); give more training data or lower data.block_size"
    )
  if config.data.validation == "holdout" and src.rows("valid") == 0:
    raise RunError(
      f"data.validation=holdout, but {src.directory} has no validation rows (no user has a training "
      f"sample besides its last one); set data.validation=test or none"
    )


def choose_placement(config: Config, src: pipeline.Source, mesh: Mesh) -> tuple[str, str | None]:
  """(data.placement resolved to host or device, the line saying which and the sizes, or None for host by
  choice). auto: device when the splits a process holds take at most DEVICE_SHARE of its devices' least free
  memory (all processes agree: host if any says no); device: refused (DataError) when they exceed it whole."""
  wanted = config.data.placement
  if wanted == "host":
    return "host", None
  processes = jax.process_count()
  splits = [s for s in ("train", "valid", "test") if src.rows(s)]
  # A process holds the training blocks it reads: with several processes and epochs, most of the split.
  need = sum(resident.estimate_bytes(src, s, 1.0 if s == "train" else 1 / processes) for s in splits)
  free, copies = on_device.free_bytes(mesh)
  share = need * copies / max(free, 1)
  sizes = (
    f"the splits take {need / 2**20:,.1f} MiB"
    + (f" x {copies} devices" if copies > 1 else "")
    + f", {share:.1%} of {free / 2**30:,.1f} GiB free"
  )
  if wanted == "device":
    if share > 1:
      raise DataError(
        f"data.placement=device: {sizes.replace('the splits take', 'the splits need')}, more than "
        f"the devices have; set data.placement=host"
      )
    return "device", f"data.placement=device: {sizes}"
  fits = share <= on_device.DEVICE_SHARE
  if processes > 1:
    fits = bool(np.asarray(multihost_utils.process_allgather(np.array([fits]))).all())
  chosen = "device" if fits else "host"
  return chosen, (
    f"data.placement=auto: {chosen} ({sizes}; device when at most "
    f"{on_device.DEVICE_SHARE:.0%}" + ("" if fits or share <= on_device.DEVICE_SHARE else " on every process") + ")"
  )


@dataclasses.dataclass
class Run:
  config: Config  # resolved (data.scale >= 0); a copy, never the caller's
  schema: FeatureSchema
  mesh: Mesh
  model: nn.Module
  tx: optim.Optimizer
  init: Callable[[jax.Array], state_lib.TrainState]  # key data -> state (pure)
  shapes: state_lib.TrainState  # jax.ShapeDtypeStruct leaves
  shardings: Any  # a NamedSharding per leaf of the state
  total_steps: int  # train.steps, else train.epochs epochs
  src: pipeline.Source | None = None  # None: a run without data (benchmarks on synthetic batches)
  notes: tuple[str, ...] = ()  # lines the caller may print (e.g. the data.scale note)
  placement: str = "host"  # data.placement resolved (choose_placement): host or device
  _resident: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)  # split -> (Held, its store)

  @classmethod
  def build(cls, config: Config, src: pipeline.Source | None = None, mesh: Mesh | None = None) -> "Run":
    """The run `config` describes; `src` / `mesh` when the caller has them already (tests)."""
    use_compilation_cache(config.train.compilation_cache)
    config, note = resolved(config)
    if mesh is None:
      mesh = check_devices(config) if src is None else make_mesh(config)
    src = src if src is not None else open_source(config)
    check_splits(config, src)
    check_batch(config.train.batch_size, src.block_size(), mesh.devices.size, jax.process_count())
    batch = partition.per_process_batch(config.train.batch_size, mesh, "train.batch_size")
    total = config.train.steps or config.train.epochs * pipeline.steps_per_epoch(src, batch, jax.process_count())
    run = cls.assemble(config, src.schema, mesh, total)
    placement, line = choose_placement(config, src, mesh)
    return dataclasses.replace(run, src=src, placement=placement, notes=tuple(n for n in (note, line) if n))

  @classmethod
  def assemble(cls, config: Config, schema: FeatureSchema, mesh: Mesh, total_steps: int) -> "Run":
    """Model, optimizer, state shapes and shardings for `schema` on `mesh`, without data."""
    model = models.get(config.model.name, config.model)
    tx = optim.make_optimizer(config.train, total_steps)
    init = state_lib.make_init(model, schema, config.model.embed_dim, tx, partition.model_size(mesh))
    shapes = jax.eval_shape(init, jax.random.key_data(jax.random.key(0)))
    return cls(config, schema, mesh, model, tx, init, shapes, partition.state_shardings(shapes, mesh), total_steps)

  @classmethod
  def restore(cls, config: Config, workdir: str | Path) -> tuple["Run", dict[str, Any], int]:
    """(run, params, step) of the best checkpoint in `workdir` (the latest when none was evaluated;
    unreadable ones are skipped, said in one line, and left where they are): for --eval, --predict,
    --export and --plot after training."""
    workdir = Path(workdir)
    if not workdir_lib.checkpoint_steps(workdir):  # before any data is built or any folder created
      raise _no_checkpoint(workdir)
    run = cls.build(config)
    # Beside a training run: creates, cleans, deletes nothing; a step that run removes while the steps are
    # listed (Orbax reads each step's metadata) means listing them again.
    ckpt = _listed(lambda: run.checkpoints(workdir, read_only=True))
    try:
      for attempt in range(READ_ATTEMPTS):  # a training run beside this one may remove a step while it is read
        best, listed = _listed(lambda: (ckpt.best_step(), ckpt.all_steps()), ckpt.reload)
        steps = ([best] if best is not None else []) + [s for s in sorted(listed, reverse=True) if s != best]
        if not steps:
          raise _no_checkpoint(workdir)
        try:
          with interrupts.phase("restoring the checkpoint"):
            state, _, step, notes = restore_first_readable(
              ckpt, steps, run.abstract_state(), run.identity(), workdir, set_aside=False
            )
          break
        except _Removed:
          if attempt == READ_ATTEMPTS - 1:
            raise
          ckpt.reload()
    finally:
      ckpt.close()  # also on an error: a manager left open prints Orbax's traceback at exit
    for line in notes:
      progress.say(line)
    return run, state.params, step

  # ---------------------------------------------------------------- pieces
  @property
  def batch_per_process(self) -> int:
    return partition.per_process_batch(self.config.train.batch_size, self.mesh, "train.batch_size")

  @property
  def blocks_per_batch(self) -> int:
    return self.config.train.batch_size // self.src.block_size()

  @property
  def steps_per_epoch(self) -> int:
    return pipeline.steps_per_epoch(self.src, self.batch_per_process, jax.process_count())

  @functools.cached_property
  def lookup(self) -> embedding.Lookup:
    """How the steps read the tables (train.embedding_lookup, train.one_hot_rows) on this run's devices."""
    t = self.config.train
    platform = self.mesh.devices.flat[0].platform
    return embedding.resolve_lookup(t.embedding_lookup, t.one_hot_rows, platform, partition.model_size(self.mesh) > 1)

  def _train_fn(self) -> Callable:
    """The pure train step (step.make_train_step) of this run's model, optimizer and settings."""
    c = self.config
    return step_lib.make_train_step(
      self.model, self.schema, self.tx, c.model.aux_loss_weight, c.train.compute_dtype, self.lookup
    )

  def _eval_fn(self) -> Callable:
    """The pure eval step (step.make_eval_step): probabilities of a batch."""
    return step_lib.make_eval_step(self.model, self.schema, self.config.train.compute_dtype, self.lookup)

  @functools.cached_property
  def train_step(self) -> Callable:
    """(state, batch) -> (state, metrics), jitted with the state's shardings (the state is donated)."""
    fn = self._train_fn()
    return partition.jit_train_step(fn, self.mesh, self.shardings)

  @functools.cached_property
  def eval_step(self) -> Callable:
    """(params, batch) -> probabilities [B], jitted."""
    fn = self._eval_fn()
    return partition.jit_eval_step(fn, self.mesh, self.shardings.params)

  def init_state(self, seed: int | None = None) -> state_lib.TrainState:
    seed = self.config.train.seed if seed is None else seed
    return partition.jit_init(self.init, self.mesh)(jax.random.key_data(jax.random.key(seed)))

  def abstract_state(self):
    return abstract(self.shapes, self.shardings)

  def identity(self) -> dict[str, Any]:
    generated = data_lib.source_for(self.config.data).generated
    return workdir_lib.identity(
      self.config,
      shards.content_id(self.src.directory, self.src.meta),
      self.schema.fingerprint(),
      self.config.data.scale if generated else None,
      shards.rows_digest(self.src.meta),
    )

  def checkpoints(self, workdir: str | Path, read_only: bool = False) -> Checkpoints:
    return Checkpoints(Path(workdir) / "checkpoints", keep=self.config.train.keep_checkpoints, read_only=read_only)

  def place(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays sharded over the mesh's `data` axis."""
    return partition.to_global(batch, self.mesh)

  @functools.cached_property
  def _train_call(self) -> Callable:
    fn = self._train_fn()
    held = self.placement == "device"
    schema, max_len, mesh = self.schema, self.config.data.max_len, self.mesh

    def call(state, store, inputs):
      if not held:  # a tuple of batches, each placed on the devices
        inputs = jax.tree.map(lambda *x: jnp.stack(x), *inputs)

      def body(state, x):
        return fn(state, on_device.gather(schema, max_len, mesh, store, x) if held else x)

      return jax.lax.scan(body, state, inputs)

    rep = partition.replicated(mesh)
    inputs = NamedSharding(mesh, P(None, mesh.axis_names)) if held else partition.batch_sharding(mesh)
    store = on_device.store_sharding(mesh) if held else rep
    return jax.jit(
      call, in_shardings=(self.shardings, store, inputs), out_shardings=(self.shardings, rep), donate_argnums=0
    )

  def train_call(self, state: state_lib.TrainState, inputs: Any) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """(state, metrics [steps]) after the steps of `inputs` (what the training iterator's `take(steps)`
    returned), in one jitted call: a scan of the train step, whose losses and metrics equal those of
    `train_step` called step by step."""
    store = self._resident["train"][1] if self.placement == "device" else None
    return self._train_call(state, store, inputs)

  def resident(self, split: str, start: int = 0) -> tuple[resident.Held, dict[str, jax.Array]]:
    """(this process's blocks of `split` as held on the devices, their device columns), loaded at the first
    call (training: the blocks this process reads from global batch `start` to the run's end)."""
    if split not in self._resident:
      c = self.config
      if split == "train":
        k = pipeline.blocks_per_process_batch(self.src, self.batch_per_process, jax.process_count())
        blocks = resident.train_blocks(
          self.src, c.train.seed, k, start, max(start + 1, self.total_steps), jax.process_index(), jax.process_count()
        )
      else:
        blocks = resident.eval_blocks(self.src, split, jax.process_index(), jax.process_count())
      with interrupts.phase(f"loading the {split} split onto the devices"):
        held = resident.load(self.src, split, blocks, max_len=c.data.max_len, oov=c.data.oov, threads=c.data.threads)
        store = on_device.place(held, self.mesh)
      held.columns = {}  # on the devices now: the host's copy is freed
      self._resident[split] = (held, store)
    return self._resident[split]

  def train_iterator(self, start: int = 0, on_devices: bool = False) -> pipeline.TrainIterator | resident.RowIterator:
    """Training batches from global batch `start`: numpy, or (`on_devices`) already placed on the mesh,
    data.device_prefetch batches ahead of the step; under data.placement=device (with `on_devices`) their
    row indices instead, for `train_call`."""
    c = self.config
    if on_devices and self.placement == "device":
      held, _ = self.resident("train", start)
      k = pipeline.blocks_per_process_batch(self.src, self.batch_per_process, jax.process_count())
      order = pipeline.BlockOrder(
        len(self.src.blocks("train")), c.train.seed, k, jax.process_index(), jax.process_count()
      )
      sharding = NamedSharding(self.mesh, P(None, self.mesh.axis_names))
      return resident.RowIterator(
        held,
        order,
        c.train.seed,
        start,
        k * jax.process_count(),
        lambda rows: jax.make_array_from_process_local_data(sharding, rows),
        c.data.device_prefetch,
      )
    return pipeline.train_iterator(
      self.src,
      batch_per_process=self.batch_per_process,
      seed=c.train.seed,
      max_len=c.data.max_len,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      workers=c.data.workers,
      threads=c.data.threads,
      prefetch=c.data.prefetch,
      start=start,
      oov=c.data.oov,
      place=self.place if on_devices else None,
      device_prefetch=c.data.device_prefetch,
    )

  # ---------------------------------------------------------------- evaluation
  def evaluate(self, params, split: str = "test", eval_step: Callable | None = None) -> dict[str, Any]:
    """Exact AUC / gAUC / logloss over a whole split (every row once, padding rows dropped); with
    `mapped_values` when data.oov=map read values as 0. `eval_step`: another (params, batch) -> probs."""
    return self.metrics(split, *self.scores(params, split, eval_step))

  def metrics(self, split: str, rows: tuple[np.ndarray, np.ndarray, np.ndarray], mapped: dict[str, int]) -> dict:
    """`evaluate`'s metrics of the scored `rows` (labels, probabilities, groups) of `split`."""
    y, p, u = rows
    try:
      out: dict[str, Any] = metrics_lib.evaluate(y, p, u)
    except metrics_lib.NaNScores as e:
      raise Diverged(
        f"the model's {split} predictions are not finite: {e}; lower train.learning_rate or check the "
        f"data (the checkpoints written so far are kept)"
      ) from None
    if np.isnan(out["auc"]):
      labels = set(np.unique(y).tolist())
      progress.say(
        f"warning: the {split} split has {'no rows' if not labels else f'one class only (every label {labels.pop():g})'}"
        f": its AUC and gAUC are undefined, and model selection ignores them"
      )
    if mapped:  # this process's count (data.oov=map)
      out["mapped_values"] = mapped
    return out

  def scores(
    self, params, split: str = "test", eval_step: Callable | None = None
  ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict[str, int]]:
    """((labels, probabilities, groups) of every real row of `split`, in the split's order; the OOV counts)."""
    c = self.config
    rows = partition.per_process_batch(c.train.eval_batch_size, self.mesh, "train.eval_batch_size")
    if self.placement == "device" and eval_step is None:
      outs, mapped = self._evaluate_on_devices(params, split, rows)
    else:
      outs, mapped = self._evaluate_from_host(params, split, rows, eval_step or self.eval_step)
    outs = partition.gather(outs)
    cat = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    real = cat["w"] > 0
    return (cat["y"][real], cat["p"][real], cat["u"][real]), mapped

  @functools.cached_property
  def _eval_rows(self) -> Callable:
    """(params, store, rows, valid) -> (probabilities, labels, groups, weights) of the gathered batch."""
    fn = self._eval_fn()
    schema, max_len, mesh, group = self.schema, self.config.data.max_len, self.mesh, self.src.group_key

    def call(params, store, rows, valid):
      batch = on_device.gather(schema, max_len, mesh, store, rows, valid)
      return fn(params, batch), batch["label"], batch[group], batch["weight"]

    data = partition.batch_sharding(mesh)
    return jax.jit(
      call, in_shardings=(self.shardings.params, on_device.store_sharding(mesh), data, data), out_shardings=data
    )

  def _evaluate_on_devices(self, params, split: str, rows: int) -> tuple[list[dict[str, jax.Array]], dict[str, int]]:
    """The eval pass over the split held on the devices: the host sends each batch's row numbers only."""
    held, store = self.resident(split)
    count = pipeline.eval_batch_count(self.src, split, rows, jax.process_count())
    data = partition.batch_sharding(self.mesh)
    outs = []
    with progress.Progress(
      count, "batch", f"eval {split}", every=count, fields=(f"{self.src.rows(split):,} rows",), leave=False
    ) as bar:
      for b in range(count):
        local = np.arange(b * rows, (b + 1) * rows, dtype=np.int32)
        valid = local < held.rows
        placed = [jax.make_array_from_process_local_data(data, x) for x in (local, valid)]
        p, y, u, w = self._eval_rows(params, store, *placed)
        outs.append({"p": p, "y": y, "u": u, "w": w})
        bar.update()
    return outs, held.counts().as_dict()

  def _evaluate_from_host(
    self, params, split: str, rows: int, eval_step: Callable
  ) -> tuple[list[dict[str, jax.Array]], dict[str, int]]:
    c = self.config
    count, batches = pipeline.eval_batches(
      self.src,
      split,
      rows_per_process=rows,
      max_len=c.data.max_len,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      oov=c.data.oov,
      threads=c.data.threads,
      place=self.place,
      device_prefetch=c.data.device_prefetch,
    )
    group = self.src.group_key  # the raw user key's group
    outs = []
    # In a log file one line per pass (when it is done); on a terminal a bar that goes away.
    # The scores stay on the devices until the pass ends: one fetch, no wait on the device per batch.
    try:
      with progress.Progress(
        count, "batch", f"eval {split}", every=count, fields=(f"{self.src.rows(split):,} rows",), leave=False
      ) as bar:
        for batch in batches:
          probs = eval_step(params, batch)
          outs.append({"p": probs, "y": batch["label"], "u": batch[group], "w": batch["weight"]})
          bar.update()
    finally:
      batches.close()
    return outs, batches.counts.as_dict()

  def evaluated_splits(self) -> tuple[str, ...]:
    """The splits each evaluation of a training run scores: validation (data.validation=holdout) and test."""
    return ("valid", "test") if SELECTED_ON[self.config.data.validation] == "valid" else ("test",)

  def evaluate_splits(self, params, step: int) -> tuple[dict[str, dict[str, Any]], float, tuple[np.ndarray, ...]]:
    """({split: metrics} for the validation split (data.validation=holdout) and the test split, the value
    the best checkpoint is chosen by, the test split's scored rows (labels, probabilities, groups)). The
    value: the validation AUC, the test AUC (validation=test) or the step (validation=none: the latest
    evaluation is the one reported). An undefined AUC selects nothing: -1."""
    on = SELECTED_ON[self.config.data.validation]
    evals, scored = {}, {}
    for split in self.evaluated_splits():
      scored[split], mapped = self.scores(params, split)
      evals[split] = self.metrics(split, scored[split], mapped)
    if on is None:
      return evals, float(step), scored["test"]
    value = evals[on]["auc"]
    return evals, -1.0 if np.isnan(value) else value, scored["test"]


READ_ATTEMPTS = 20  # Run.restore lists the steps again this often when the ones it tried were removed meanwhile


def _listed(read: Callable[[], Any], again: Callable[[], None] | None = None) -> Any:
  """read(), tried again (after again()) while it fails on a step folder removed meanwhile."""
  for attempt in range(READ_ATTEMPTS):
    try:
      return read()
    except FileNotFoundError:
      if attempt == READ_ATTEMPTS - 1:
        raise
      if again is not None:
        _listed(again)


class _Removed(RunError):
  """No listed checkpoint could be read and some of them were removed while being read (by the training run
  that writes this workdir, keeping its newest train.keep_checkpoints): list them again."""


def _no_checkpoint(workdir: Path) -> RunError:
  where = f"{workdir} does not exist" if not workdir.exists() else f"no checkpoint in {workdir / 'checkpoints'}"
  return RunError(f"{where}; train first (the same command without this flag), or give the trained run's --workdir")


def restore_first_readable(
  ckpt: Checkpoints, steps: list[int], target, identity: dict[str, Any], workdir: Path, set_aside: bool
) -> tuple[Any, dict[str, Any] | None, int, list[str]]:
  """(state, data position, step, lines to print) of the first of `steps` that can be read. A checkpoint
  made for another model or data set is refused (RunError); one that cannot be read (missing or truncated
  files, non-finite values) is reported and the next is tried; with `set_aside` (training, one process) it
  is moved to `checkpoints.damaged/` so that a new checkpoint of its step can be written. What Orbax prints
  while a damaged one fails (checkpoint.echoes_dropped) is held back until all are tried."""
  with echoes_dropped():
    return _restore_first_readable(ckpt, steps, target, identity, workdir, set_aside)


@dataclasses.dataclass
class _Attempt:
  """One checkpoint step tried: restored (state, data position), removed meanwhile (by the run writing it),
  or failed (why, in one line). A checkpoint of another run raises instead: no older step can be right."""

  step: int
  outcome: Literal["restored", "removed", "failed"]
  why: str = ""
  state: Any = None
  data_state: dict[str, Any] | None = None


def _other_run(workdir: Path, what: str) -> RunError:
  return RunError(
    f"{workdir} holds checkpoints of another run ({what}); use another --workdir, or --fresh to move "
    f"them aside and start over"
  )


def _attempt(ckpt: Checkpoints, step: int, target, identity: dict[str, Any], workdir: Path) -> _Attempt:
  gone = lambda: _Attempt(step, "removed")
  try:
    saved = ckpt.read_config(step).get("identity")
  except Exception as e:  # a damaged checkpoint raises whatever the failing read raises
    return gone() if not ckpt.exists(step) else _Attempt(step, "failed", _first_line(e))
  diff = workdir_lib.differences(saved, identity) if saved else []
  if diff:
    raise _other_run(workdir, "; ".join(diff))
  try:
    state, data_state, _ = ckpt.restore(step, target)
  except CheckpointMismatch as e:
    raise _other_run(workdir, str(e)) from None
  except Exception as e:
    return gone() if not ckpt.exists(step) else _Attempt(step, "failed", _first_line(e))
  problem = pipeline.position_problem(data_state) or ("" if _finite(state.params) else "it holds non-finite values")
  return _Attempt(step, "failed", problem) if problem else _Attempt(step, "restored", "", state, data_state)


def _restore_first_readable(ckpt, steps, target, identity, workdir, set_aside):
  failed: list[_Attempt] = []
  removed: list[int] = []
  lines: list[str] = []
  moving = set_aside and jax.process_count() == 1
  for step in steps:
    attempt = _attempt(ckpt, step, target, identity, workdir)
    if attempt.outcome == "removed":
      removed.append(step)
    elif attempt.outcome == "restored":
      if failed:
        lines.append(
          f"using checkpoint step {step} ("
          + "; ".join(f"step {a.step} could not be read: {a.why}" for a in failed)
          + ")"
        )
      if step in ckpt.unverified:
        lines.append(
          f"note: checkpoint step {step} was written without a manifest of checksums (by an earlier "
          f"version, or its run is writing it now), so its files could not be verified"
        )
      return attempt.state, attempt.data_state, step, lines
    else:
      failed.append(attempt)
      if moving:
        where = ckpt.set_aside(step, attempt.why)
        lines.append(f"warning: checkpoint step {step} could not be read ({attempt.why}); moved to {where}")
  if removed:
    raise _Removed(f"checkpoint steps {removed} in {workdir / 'checkpoints'} were removed while being read")
  for line in lines:
    progress.say(line)
  raise RunError(
    f"no checkpoint in {workdir / 'checkpoints'} can be read ("
    + "; ".join(f"step {a.step}: {a.why}" for a in failed)
    + (
      f"); they were moved to {workdir / 'checkpoints.damaged'}: rerun to start over"
      if moving
      else "); --fresh moves them aside and starts over"
    )
  )


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  if isinstance(e, CheckpointUnreadable) and text:  # the project's own words need no class name
    return text[0][:200]
  return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _finite(params) -> bool:
  leaves = [x for x in jax.tree.leaves(params) if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
  return all(bool(jax.numpy.isfinite(x).all()) for x in leaves)
