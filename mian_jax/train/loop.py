"""The one trainer: `train_and_evaluate(config, workdir)`.

Sections: data -> mesh -> model and state (from shapes) -> jitted steps -> restore -> loop (train,
log, evaluate, checkpoint) -> final evaluation. Metrics stay on device until a log step. SIGTERM /
SIGINT finish the current step, save a checkpoint and exit with EXIT_PREEMPTED; a second Ctrl-C
stops at once (the last complete checkpoint stays valid).
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from mian_jax import data as data_lib
from mian_jax import distributed
from mian_jax import metrics as metrics_lib
from mian_jax import models
from mian_jax.config import Config, ConfigError
from mian_jax.data import pipeline
from mian_jax.train import optim, partition, state as state_lib, step as step_lib
from mian_jax.train.checkpoint import Checkpoints, abstract

EXIT_PREEMPTED = 75  # interrupted by a signal after saving a checkpoint; rerun to resume


class TrainingError(RuntimeError):
  """The run cannot go on (e.g. a non-finite loss); the message says at which step and what to do."""


class _Interrupts:
  """SIGTERM / SIGINT set a flag checked after every step; a second SIGINT raises at once."""

  def __init__(self):
    self.signal: int | None = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


class _Log:
  """metrics.jsonl (one JSON object per event), written by process 0 only."""

  def __init__(self, path: Path, resume_step: int):
    self.path = path
    self.enabled = jax.process_index() == 0
    if self.enabled and path.exists():  # drop events a killed run logged after its last checkpoint
      kept = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= resume_step]
      path.write_text("".join(l + "\n" for l in kept))

  def write(self, event: dict[str, Any]) -> None:
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps(event) + "\n")


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


def evaluate(eval_step, params, src: pipeline.Source, config: Config, mesh) -> dict[str, float]:
  """Exact AUC / gAUC / logloss over the whole test split (every row once, padding rows dropped)."""
  rows = partition.per_process_batch(config.train.eval_batch_size, mesh)
  num, batches = pipeline.eval_batches(src, "test", rows_per_process=rows, max_len=config.data.max_len,
                                       process_index=jax.process_index(), process_count=jax.process_count())
  user_key = src.schema.user_key
  outs = []
  for local in batches:
    batch = partition.to_global(local, mesh)
    probs = eval_step(params, batch)
    outs.append(partition.gather({"p": probs, "y": batch["label"], "u": batch[user_key], "w": batch["weight"]}))
  cat = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
  real = cat["w"] > 0
  return metrics_lib.evaluate(cat["y"][real], cat["p"][real], cat["u"][real])


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


def restore_best(config: Config, workdir: str | Path):
  """(model, source, params, mesh) from the best checkpoint in `workdir` (the latest when none was
  evaluated): for evaluation, prediction and plots after training."""
  workdir = Path(workdir)
  resolve_scale(config, quiet=True)
  src = data_lib.open_source(config.data)
  mesh = make_mesh(config)
  model = models.get(config.model.name, config.model)
  init = state_lib.make_init(model, src.schema, config.model.embed_dim, make_optimizer(config.train, 1),
                             partition.model_size(mesh))
  shapes = jax.eval_shape(init, jax.random.key_data(jax.random.key(0)))
  ckpt = Checkpoints(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  step = ckpt.best_step()
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise TrainingError(f"no checkpoint in {workdir / 'checkpoints'}; train first (same command without this flag)")
  state, _, _ = ckpt.restore(step, abstract(shapes, partition.state_shardings(shapes, mesh)))
  ckpt.close()
  return model, src, state.params, mesh


def train_and_evaluate(config: Config, workdir: str | Path, fresh: bool = False) -> dict[str, Any]:
  workdir = Path(workdir)
  t_start = time.perf_counter()
  lead = jax.process_index() == 0
  # ---------------------------------------------------------------- data
  resolve_scale(config)
  src = _open_source_once(config)
  mesh = make_mesh(config)
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
  if fresh and lead and workdir.exists():
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    (workdir / "metrics.jsonl").unlink(missing_ok=True)
  if lead:
    (workdir / "result.json").unlink(missing_ok=True)  # written again when this run finishes
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = Checkpoints(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  start = ckpt.latest_step()
  data_state = None
  if start is None:
    start = 0
    state = partition.jit_init(init, mesh)(jax.random.key_data(jax.random.key(config.train.seed)))
  else:
    state, data_state, _ = ckpt.restore(start, abstract(shapes, shardings))
    _say(f"resumed from step {start} ({workdir / 'checkpoints'})")
  blocks_per_batch = config.train.batch_size // src.block_size()
  data_it = pipeline.train_iterator(
      src, batch_per_process=batch_local, seed=config.train.seed, max_len=config.data.max_len,
      process_index=jax.process_index(), process_count=jax.process_count(),
      workers=config.data.workers, prefetch=config.data.prefetch,
      start=pipeline.resume_from(data_state, blocks_per_batch, config.train.reset_data_position))
  if lead:
    (workdir / "config.json").write_text(config.to_json())
  log = _Log(workdir / "metrics.jsonl", start)
  n_params = state_lib.num_params(shapes.params)
  _say(f"{config.model.name}: {n_params['tables']:,} embedding + {n_params['dense']:,} dense parameters; "
       f"{src.rows('train'):,} train / {src.rows('test'):,} test samples; {total} steps of {config.train.batch_size} "
       f"on {mesh.devices.size} device(s)")

  def save(step: int, metrics: dict[str, float] | None = None) -> None:
    ckpt.save(step, state, data_it.get_state(), config.to_dict(), metrics)

  # ---------------------------------------------------------------- loop
  pending: list[dict[str, jax.Array]] = []
  rates: list[float] = []
  last: dict[str, Any] = {}
  t_log, step = time.perf_counter(), start
  bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not lead or None, dynamic_ncols=True)
  with _Interrupts() as interrupts:
    while step < total:
      batch = partition.to_global(next(data_it), mesh)
      with jax.transfer_guard("disallow"):
        state, step_metrics = train_step(state, batch)
      pending.append(step_metrics)
      step += 1
      if step % config.train.log_every == 0 or step == total:
        fetched = jax.device_get(pending)
        losses = np.array([m["loss"] for m in fetched])
        if not np.all(np.isfinite(losses)):
          bad = step - len(losses) + int(np.argmax(~np.isfinite(losses))) + 1
          raise TrainingError(f"non-finite loss at step {bad} (steps {step - len(losses) + 1}..{step}); "
                              f"lower train.learning_rate or check the data; the last checkpoint is kept")
        now = time.perf_counter()
        rate = len(losses) * config.train.batch_size / (now - t_log)
        t_log, pending = now, []
        rates.append(rate)
        log.write({"step": step, "split": "train", "loss": float(losses.mean()), "samples_per_s": rate,
                   "grad_norm": float(np.mean([m["grad_norm"] for m in fetched]))})
        bar.set_postfix(loss=f"{losses.mean():.4f}", samples_s=f"{rate:,.0f}")
        bar.update(len(losses))
      if step % eval_every == 0 or step == total:
        last = {"step": step, "split": "test", **evaluate(eval_step, state.params, src, config, mesh)}
        log.write(last)
        _say(f"step {step}: test auc={last['auc']:.4f} gauc={last['gauc']:.4f} logloss={last['logloss']:.4f}")
        save(step, {k: last[k] for k in ("auc", "gauc", "logloss")})
      elif step % config.train.checkpoint_every == 0:
        save(step)
      if interrupts.signal is not None:
        save(step)
        ckpt.close()
        bar.close()
        _say(f"interrupted by signal {interrupts.signal} at step {step}; checkpoint saved in "
             f"{workdir / 'checkpoints'}; run the same command again to resume")
        raise SystemExit(EXIT_PREEMPTED)
  bar.close()
  if not last or last["step"] != step:  # resumed after the final step: evaluate what was restored
    last = {"step": step, "split": "test", **evaluate(eval_step, state.params, src, config, mesh)}
  save(step, {k: last[k] for k in ("auc", "gauc", "logloss")})
  result = {**last, "best_step": ckpt.best_step(), "bayes_auc": src.meta["stats"].get("bayes_auc"),
            "samples_per_s": float(np.median(rates)) if rates else None,
            "wall_s": time.perf_counter() - t_start, "workdir": str(workdir)}
  if lead:  # a finished run: sweeps skip it, summaries read it
    (workdir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
  ckpt.close()
  line = f"final test auc={last['auc']:.4f} gauc={last['gauc']:.4f} logloss={last['logloss']:.4f}"
  if result["bayes_auc"] is not None:
    line += f" (bayes auc={result['bayes_auc']:.4f})"
  _say(line)
  return result
