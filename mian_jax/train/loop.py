"""The one trainer: `train_and_evaluate(config, workdir)`.

Sections: data -> mesh -> model and state (from shapes) -> jitted steps -> restore -> loop (train,
log, evaluate, checkpoint) -> final evaluation. Metrics stay on device until a log step. SIGTERM /
SIGINT finish the current step, save a checkpoint and exit with EXIT_PREEMPTED; a second Ctrl-C
stops at once with EXIT_KILLED (the last complete checkpoint stays valid).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from mian_jax import data as data_lib
from mian_jax import distributed, files, interrupts
from mian_jax import metrics as metrics_lib
from mian_jax import models
from mian_jax.config import Config, ConfigError, check_batch
from mian_jax.data import pipeline
from mian_jax.train import optim, partition, state as state_lib, step as step_lib, workdir as workdir_lib
from mian_jax.train.checkpoint import CheckpointMismatch, Checkpoints, CheckpointWriteError, abstract

EXIT_PREEMPTED = interrupts.EXIT_PREEMPTED  # interrupted by a signal after saving a checkpoint; rerun to resume
EXIT_KILLED = interrupts.EXIT_KILLED  # a second Ctrl-C: out at once


class TrainingError(RuntimeError):
  """The run cannot go on; the message says where and what to do (launch.py: exit 2)."""


class CheckpointNotWritten(TrainingError):
  """A checkpoint could not be written (launch.py: exit 2 at once, without the writer's shutdown noise)."""


class Diverged(TrainingError):
  """A non-finite loss or gradient with train.on_nonfinite=stop (launch.py: exit 3)."""


class _Log:
  """metrics.jsonl (one JSON object per event) and TensorBoard scalars (`<workdir>/tensorboard`, tags
  `train/...`, `valid/...` and `test/...`), written by process 0 only. On resume, metrics.jsonl drops the events a
  killed run logged after its last checkpoint; TensorBoard shows those steps twice until it reloads."""

  def __init__(self, workdir: Path, resume_step: int):
    self.path = workdir / "metrics.jsonl"
    self.enabled = jax.process_index() == 0
    self._tb = None
    if self.enabled:
      if self.path.exists():
        events, torn = files.read_jsonl(self.path)
        if torn:
          _say(f"warning: dropped {torn} unreadable line(s) of {self.path} (a write cut short by a full disk or a kill)")
        kept = [e for e in events if isinstance(e.get("step"), int) and e["step"] <= resume_step]
        files.write_text(self.path, "".join(json.dumps(e) + "\n" for e in kept))
      from mian_jax import summaries

      self._tb = summaries.Scalars(workdir / "tensorboard")

  def write(self, event: dict[str, Any], **extra: float) -> None:
    if self.enabled:
      files.append_jsonl(self.path, event)
      scalars = {f"{event['split']}/{k}": v for k, v in {**event, **extra}.items() if k not in ("step", "split")}
      self._tb.write(event["step"], scalars)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _events(path: Path) -> list[dict[str, Any]]:
  return files.read_jsonl(path)[0]


def fmt(value: float) -> str:
  """A metric for a log line: 4 decimals, or `undefined` (AUC of a split with one class)."""
  return "undefined" if value is None or np.isnan(value) else f"{value:.4f}"


def _say(message: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def resolve_scale(config: Config, quiet: bool = False) -> None:
  """data.scale < 0 means: full scale with an accelerator, 1% on CPU (said so)."""
  if config.data.scale < 0:
    if jax.default_backend() == "cpu":
      config.data.scale = 0.01
      quiet or _say("note: CPU only, so data.scale=0.01 (361k samples); full scale: --set data.scale=1.0")
    else:
      config.data.scale = 1.0


make_optimizer = optim.make_optimizer  # kept here: tests and tools build the trainer from loop's pieces


def evaluate(eval_step, params, src: pipeline.Source, config: Config, mesh, split: str = "test") -> dict[str, float]:
  """Exact AUC / gAUC / logloss over a whole split (every row once, padding rows dropped)."""
  rows = partition.per_process_batch(config.train.eval_batch_size, mesh)
  mapped: dict[str, int] = {}
  num, batches = pipeline.eval_batches(src, split, rows_per_process=rows, max_len=config.data.max_len,
                                       process_index=jax.process_index(), process_count=jax.process_count(),
                                       oov=config.data.oov, mapped=mapped)
  user_key = src.group_key  # the raw user key's group (pipeline.Source.group_key)
  outs = []
  for local in batches:
    batch = partition.to_global(local, mesh)
    probs = eval_step(params, batch)
    outs.append(partition.gather({"p": probs, "y": batch["label"], "u": batch[user_key], "w": batch["weight"]}))
  cat = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
  real = cat["w"] > 0
  try:
    out = metrics_lib.evaluate(cat["y"][real], cat["p"][real], cat["u"][real])
  except metrics_lib.NaNScores as e:
    raise Diverged(f"the model's {split} predictions are not finite: {e}; lower train.learning_rate or check the "
                   f"data (the checkpoints written so far are kept)") from None
  if np.isnan(out["auc"]) and jax.process_index() == 0:
    labels = set(np.unique(cat["y"][real]).tolist())
    _say(f"warning: the {split} split has {'no rows' if not labels else f'one class only (every label {labels.pop():g})'}"
         f": its AUC and gAUC are undefined, and model selection ignores them")
  if mapped:  # this process's count (data.oov=map)
    out["mapped_values"] = mapped
  return out


def _open_source_once(config: Config):
  """Process 0 generates or converts the data set; the others wait for it, then open the cached result
  (or stop with process 0's error)."""
  try:
    return distributed.process_zero_first("building the data set", lambda: data_lib.open_source(config.data))
  except distributed.ProcessZeroFailed as e:
    raise TrainingError(str(e)) from None


def make_mesh(config: Config):
  """The run's mesh (train.mesh); a bad spec is a ConfigError."""
  try:
    return partition.make_mesh(spec=config.train.mesh)
  except ValueError as e:
    raise ConfigError(str(e)) from None


METRICS = ("auc", "gauc", "logloss")
SELECTED_ON = {"holdout": "valid", "test": "test", "none": None}  # data.validation -> the split that selects


def evaluate_splits(eval_step, params, src: pipeline.Source, config: Config, mesh, step: int
                    ) -> tuple[dict[str, dict[str, float]], float]:
  """({split: metrics} for the validation split (data.validation=holdout) and the test split, the value
  the best checkpoint is chosen by): the validation AUC, the test AUC (validation=test) or the step
  (validation=none: the latest evaluation is the one reported). An undefined AUC (a split with one
  class) selects nothing: -1."""
  on = SELECTED_ON[config.data.validation]
  splits = ("valid", "test") if on == "valid" else ("test",)
  evals = {split: evaluate(eval_step, params, src, config, mesh, split) for split in splits}
  if on is None:
    return evals, float(step)
  value = evals[on]["auc"]
  return evals, -1.0 if np.isnan(value) else value


def _evals_since_best(events: list[dict[str, Any]], split: str) -> int:
  """Evaluations of `split` since its best AUC (0: the latest is the best)."""
  aucs = [e["auc"] for e in events if e.get("split") == split and e.get("auc") is not None]
  aucs = [-1.0 if np.isnan(a) else a for a in aucs]
  return len(aucs) - 1 - int(np.argmax(aucs)) if aucs else 0


def restore_best(config: Config, workdir: str | Path, with_step: bool = False):
  """(model, source, params, mesh[, step]) from the best checkpoint in `workdir` (the latest when none
  was evaluated): for evaluation, prediction, export and plots after training."""
  workdir = Path(workdir)
  resolve_scale(config, quiet=True)
  src = data_lib.open_source(config.data)
  mesh = make_mesh(config)
  model = models.get(config.model.name, config.model)
  init = state_lib.make_init(model, src.schema, config.model.embed_dim, make_optimizer(config.train, 1),
                             partition.model_size(mesh))
  shapes = jax.eval_shape(init, jax.random.key_data(jax.random.key(0)))
  ckpt = Checkpoints(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  best = ckpt.best_step()
  steps = ([best] if best is not None else []) + [s for s in sorted(ckpt.all_steps(), reverse=True) if s != best]
  if not steps:
    raise TrainingError(f"no checkpoint in {workdir / 'checkpoints'}; train first (same command without this flag)")
  identity = workdir_lib.identity(config, src.directory, src.schema.fingerprint())
  with interrupts.phase("restoring the checkpoint"):
    state, _, step = _restore_first_readable(ckpt, steps, abstract(shapes, partition.state_shardings(shapes, mesh)),
                                             identity, workdir, set_aside=False)
  ckpt.close()
  return (model, src, state.params, mesh, step) if with_step else (model, src, state.params, mesh)


def train_and_evaluate(config: Config, workdir: str | Path, fresh: bool = False) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint unless `fresh`), evaluates, and
  returns the final metrics (also written to result.json). One run per workdir at a time."""
  workdir = Path(workdir)
  try:
    with workdir_lib.Lock(workdir, enabled=jax.process_index() == 0):
      return _train_and_evaluate(config, workdir, fresh)
  except (workdir_lib.WorkdirBusy, files.NotOurs) as e:
    raise TrainingError(str(e)) from None


def _restore_first_readable(ckpt: Checkpoints, steps: list[int], target, identity: dict[str, Any], workdir: Path,
                            set_aside: bool) -> tuple[Any, dict[str, Any] | None, int]:
  """(state, data position, step) of the first of `steps` that can be read. A checkpoint made for another
  model or data set is refused (TrainingError); one that cannot be read (missing or truncated files, non-finite
  values) is reported in one line and the next is tried; with `set_aside` (training, one process) it is
  moved to `checkpoints.damaged/` so that a new checkpoint of its step can be written."""
  failed = []
  for step in steps:
    try:
      saved = ckpt.read_config(step).get("identity")
    except Exception as e:  # a damaged checkpoint raises whatever the failing read raises
      failed.append((step, _first_line(e)))
    else:
      diff = workdir_lib.differences(saved, identity) if saved else []
      if diff:
        raise TrainingError(f"{workdir} holds checkpoints of another run ({'; '.join(diff)}); use another --workdir, "
                            f"or --fresh to move them aside and start over")
      try:
        state, data_state, _ = ckpt.restore(step, target)
      except CheckpointMismatch as e:
        raise TrainingError(f"{workdir} holds checkpoints of another run ({e}); use another --workdir, or --fresh "
                            f"to move them aside and start over") from None
      except Exception as e:
        failed.append((step, _first_line(e)))
      else:
        if _finite(state.params):
          if failed:
            _say(f"using checkpoint step {step} ({'; '.join(f'step {s} could not be read: {why}' for s, why in failed)})")
          return state, data_state, step
        failed.append((step, "it holds non-finite values"))
    if set_aside and jax.process_count() == 1:
      where = ckpt.set_aside(step, failed[-1][1])
      _say(f"warning: checkpoint step {step} could not be read ({failed[-1][1]}); moved to {where}")
  moved = set_aside and jax.process_count() == 1
  raise TrainingError(f"no checkpoint in {workdir / 'checkpoints'} can be read ("
                      + "; ".join(f"step {s}: {why}" for s, why in failed)
                      + (f"); they were moved to {workdir / 'checkpoints.damaged'}: rerun to start over" if moved
                         else "); --fresh moves them aside and starts over"))


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _finite(params) -> bool:
  leaves = [x for x in jax.tree.leaves(params) if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
  return all(bool(jax.numpy.isfinite(x).all()) for x in leaves)


def _os_reason(e: Exception) -> str:
  """The operating system's words for a failed write ("File too large", "No space left on device"), as
  Orbax / TensorStore wrap them, else the error's first line."""
  text = str(e)
  found = re.search(r"([^:\]\[]+?) \[os_error_code='?\d+'?\]", text)
  if found:
    return found.group(1).strip()
  return getattr(e, "strerror", None) or (text.splitlines()[0][:200] if text else type(e).__name__)


def _kept(ckpt: Checkpoints) -> str:
  step = ckpt.latest_step()
  return "no checkpoint was written yet" if step is None else f"the last checkpoint (step {step}) is kept"


def _train_and_evaluate(config: Config, workdir: Path, fresh: bool) -> dict[str, Any]:
  t_start = time.perf_counter()
  lead = jax.process_index() == 0
  # ---------------------------------------------------------------- data
  resolve_scale(config)
  with interrupts.phase("building the data set"):
    src = _open_source_once(config)
  if src.rows("test") == 0:
    raise TrainingError(f"{src.directory} has no test rows (the test files are empty or hold only a header); "
                        f"give test data with at least one row of each label")
  if src.rows("train") == 0:
    raise TrainingError(f"{src.directory} has no training rows (each shard keeps whole blocks of data.block_size="
                        f"{config.data.block_size} samples only); give more training data or lower data.block_size")
  if config.data.validation == "holdout" and src.rows("valid") == 0:
    raise TrainingError(f"data.validation=holdout, but {src.directory} has no validation rows (no user has a "
                        f"training sample besides its last one); set data.validation=test or none")
  interrupts.set_phase("preparing the model (nothing written yet)")
  mesh = make_mesh(config)
  check_batch(config.train.batch_size, src.block_size(), mesh.devices.size, jax.process_count())
  batch_local = partition.per_process_batch(config.train.batch_size, mesh)
  per_epoch = pipeline.steps_per_epoch(src, batch_local, jax.process_count())
  total = config.train.steps or config.train.epochs * per_epoch
  eval_every = config.train.eval_every or per_epoch
  # ---------------------------------------------------------------- model and state
  model = models.get(config.model.name, config.model)
  tx = make_optimizer(config.train, total)
  init = state_lib.make_init(model, src.schema, config.model.embed_dim, tx, partition.model_size(mesh))
  shapes = jax.eval_shape(init, jax.random.key_data(jax.random.key(0)))
  shardings = partition.state_shardings(shapes, mesh)
  dtype = config.train.compute_dtype
  train_step = partition.jit_train_step(
      step_lib.make_train_step(model, src.schema, tx, config.model.aux_loss_weight, dtype), mesh, shardings)
  eval_step = partition.jit_eval_step(step_lib.make_eval_step(model, src.schema, dtype), mesh, shardings.params)
  # ---------------------------------------------------------------- restore or start
  if fresh and lead:
    moved = workdir_lib.set_aside_previous(workdir)
    if moved:
      _say(f"--fresh: the previous run's files are in {moved} (delete that folder when no longer needed)")
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = Checkpoints(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  identity = workdir_lib.identity(config, src.directory, src.schema.fingerprint())
  steps = sorted(ckpt.all_steps(), reverse=True)
  data_state, resumed = None, False
  if steps:
    with interrupts.phase("restoring the checkpoint"):
      state, data_state, start = _restore_first_readable(ckpt, steps, abstract(shapes, shardings), identity, workdir,
                                                         set_aside=True)
    resumed = True
    _say(f"resumed from step {start} ({workdir / 'checkpoints'})")
  else:
    start = 0
    state = partition.jit_init(init, mesh)(jax.random.key_data(jax.random.key(config.train.seed)))
  if lead:  # checked the workdir's checkpoints first: a refused resume leaves a finished run as it was
    (workdir / "result.json").unlink(missing_ok=True)  # written again when this run finishes
  blocks_per_batch = config.train.batch_size // src.block_size()
  data_start = pipeline.resume_from(data_state, blocks_per_batch, config.train.reset_data_position)
  data_it = pipeline.train_iterator(
      src, batch_per_process=batch_local, seed=config.train.seed, max_len=config.data.max_len,
      process_index=jax.process_index(), process_count=jax.process_count(),
      workers=config.data.workers, prefetch=config.data.prefetch, start=data_start, oov=config.data.oov)
  if lead:
    files.write_text(workdir / "config.json", config.to_json())
  log = _Log(workdir, start)
  n_params = state_lib.num_params(shapes.params)
  _say(f"{config.model.name}: {n_params['tables']:,} embedding + {n_params['dense']:,} dense parameters; "
       f"{src.rows('train'):,} train / {src.rows('valid'):,} validation / {src.rows('test'):,} test samples; {total} steps of {config.train.batch_size} "
       f"on {mesh.devices.size} device(s)")

  def save(step: int, metrics: dict[str, float] | None = None) -> None:
    try:
      ckpt.save(step, state, data_it.get_state(), {**config.to_dict(), "identity": identity}, metrics)
    except CheckpointWriteError as e:  # a full disk, a lost mount, permissions: the complete checkpoints stay
      raise CheckpointNotWritten(f"could not write checkpoint step {step} in {workdir / 'checkpoints'} ({_os_reason(e.cause)}); "
                          f"free space or fix the directory, then rerun: {_kept(ckpt)} and training resumes "
                          f"from it (the half-written one is removed)") from None

  def batch_position(at_step: int) -> str:
    """Where the batch of training step `at_step` (1-based) comes from."""
    index = data_start + (at_step - start - 1)
    where = pipeline.batch_sources(src, config.train.seed, index, blocks_per_batch)
    shown = ", ".join(f"{Path(f).name} record {r}" for f, r in where[:8]) + (" ..." if len(where) > 8 else "")
    return f"data batch {index}: {shown}"

  selected_on = SELECTED_ON[config.data.validation]
  patience = config.train.early_stop_patience

  def evaluate_and_save(at_step: int) -> dict[str, dict[str, float]]:
    """Evaluates the validation and test splits, logs them and saves a checkpoint carrying them."""
    evals, select = evaluate_splits(eval_step, state.params, src, config, mesh, at_step)
    for split, m in evals.items():
      log.write({"step": at_step, "split": split, **m})
    _say(f"step {at_step}: " + " | ".join(f"{split} auc={fmt(m['auc'])} gauc={fmt(m['gauc'])} logloss={fmt(m['logloss'])}"
                                          for split, m in evals.items()))
    save(at_step, {"select": select, **{f"{split}_{k}": evals[split][k] for split in evals for k in METRICS}})
    return evals

  # ---------------------------------------------------------------- loop
  pending: list[dict[str, jax.Array]] = []
  rates: list[float] = []
  skipped: list[int] = []
  t_log, step = time.perf_counter(), start
  bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not lead or None, dynamic_ncols=True)

  def flush() -> None:
    """Fetches the pending step metrics: stops at (or counts) non-finite steps, logs the rest."""
    nonlocal pending, t_log
    if not pending:
      return
    fetched, pending = jax.device_get(pending), []
    first = step - len(fetched) + 1
    bad = [first + i for i, m in enumerate(fetched) if not m["finite"]]
    if bad and config.train.on_nonfinite == "stop":
      bar.close()
      if resumed and bad[0] == start + 1:  # the restored state, not the data, is the likely cause
        raise Diverged(f"non-finite loss or gradients at step {bad[0]}, the first step after resuming from checkpoint "
                       f"step {start}: that checkpoint may be damaged; move {workdir / 'checkpoints' / str(start)} "
                       f"out of the way and rerun to resume from the one before it")
      raise Diverged(f"non-finite loss or gradients at step {bad[0]} ({batch_position(bad[0])}); that update was "
                     f"not applied and {_kept(ckpt)}; lower "
                     f"train.learning_rate, check that data, or set train.on_nonfinite=skip_batch")
    if bad:
      skipped.extend(bad)
      _say(f"skipped step(s) {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}: non-finite loss or "
           f"gradients ({batch_position(bad[0])}); {len(skipped)} skipped so far")
    now = time.perf_counter()
    rate = len(fetched) * config.train.batch_size / (now - t_log)
    t_log = now
    rates.append(rate)
    good = [m for m in fetched if m["finite"]]
    event = {"step": step, "split": "train", "samples_per_s": rate, "skipped": len(bad)}
    if good:
      event.update(loss=float(np.mean([m["loss"] for m in good])), grad_norm=float(np.mean([m["grad_norm"] for m in good])))
      bar.set_postfix(loss=f"{event['loss']:.4f}", samples_s=f"{rate:,.0f}")
    log.write(event, learning_rate=float(tx.lr(step)))
    bar.update(len(fetched))

  with interrupts.Deferred() as stop:
    while step < total:
      batch = partition.to_global(next(data_it), mesh)
      with jax.transfer_guard("disallow"):
        state, step_metrics = train_step(state, batch)
      pending.append(step_metrics)
      step += 1
      evaluating = step % eval_every == 0 or step == total
      if step % config.train.log_every == 0 or evaluating or step % config.train.checkpoint_every == 0 \
          or stop.signal is not None:
        flush()  # before any save: a checkpoint is written only after its steps were checked
      if evaluating:
        evaluate_and_save(step)
        if patience and _evals_since_best(_events(log.path), selected_on) >= patience and step < total:
          _say(f"early stop at step {step}: {selected_on} auc has not improved for {patience} evaluations "
               f"(train.early_stop_patience)")
          break
      elif step % config.train.checkpoint_every == 0:
        save(step)
      if stop.signal is not None:
        save(step)
        ckpt.close()
        bar.close()
        _say(f"interrupted by {interrupts.Interrupted(stop.signal, '').name} at step {step} (training); checkpoint "
             f"saved in {workdir / 'checkpoints'}; run the same command again to resume")
        raise SystemExit(EXIT_PREEMPTED)
  bar.close()
  interrupts.set_phase("the final evaluation")
  events = _events(log.path)
  if not any(e["split"] == "test" and e["step"] == step for e in events):  # resumed after the final step
    evaluate_and_save(step)
    events = _events(log.path)
  best = ckpt.best_step()
  at_best = {e["split"]: e for e in events if e["step"] == best and e["split"] in ("valid", "test")}
  if "test" not in at_best:  # metrics.jsonl lost the best step's lines: report the latest evaluation
    best = max(e["step"] for e in events if e["split"] == "test")
    at_best = {e["split"]: e for e in events if e["step"] == best and e["split"] in ("valid", "test")}
  final = {k: at_best["test"][k] for k in METRICS}
  bad_values = data_it.bad_values()
  result = {"step": step, "split": "test", **final, "best_step": best, "selected_on": selected_on,
            **({f"valid_{k}": at_best["valid"][k] for k in METRICS} if "valid" in at_best else {}),
            "bayes_auc": src.meta["stats"].get("bayes_auc"),
            "samples_per_s": float(np.median(rates)) if rates else None,
            "wall_s": time.perf_counter() - t_start, "workdir": str(workdir), "skipped_steps": len(skipped),
            "mapped_values": {"train": bad_values, "test": at_best["test"].get("mapped_values", {})}}
  if lead:  # a finished run: sweeps skip it, summaries read it
    files.write_json(workdir / "result.json", result)
    from mian_jax import plots

    curves = plots.training_curves(log.path, workdir / "curves.png", title=f"{config.experiment} / {config.model.name}")
  log.close()
  ckpt.close()
  if lead:
    _say(f"best checkpoint: step {best} in {workdir / 'checkpoints' / str(best)}")
    _say(f"curves: {curves}; TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}")
  if skipped:
    _say(f"skipped {len(skipped)} step(s) with a non-finite loss or gradients (train.on_nonfinite=skip_batch)")
  for where, counts in (("training data", bad_values), ("test data", result["mapped_values"]["test"])):
    if counts:
      _say(f"read as OOV id 0 / 0.0 in the {where} (data.oov=map): "
           + ", ".join(f"{n:,} {what}" for what, n in sorted(counts.items())))
  line = f"final test auc={fmt(final['auc'])} gauc={fmt(final['gauc'])} logloss={fmt(final['logloss'])}"
  if selected_on is None:
    line += f" (latest evaluation, step {best}; data.validation=none)"
  else:
    line += f" (best {selected_on} auc={fmt(at_best[selected_on]['auc'])} at step {best})"
  if result["bayes_auc"] is not None:
    line += f" (bayes auc={result['bayes_auc']:.4f})"
  _say(line)
  return result
