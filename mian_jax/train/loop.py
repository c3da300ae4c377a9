"""The one trainer: `train_and_evaluate(config, workdir)`.

The run is assembled by `run.Run.build` (data, mesh, model, optimizer, state shapes, jitted steps);
what the user sees is written by `report.Reporter`. This file is the loop: start or resume, then steps,
evaluations and checkpoints until the end, then the final summary. Metrics stay on device until a log
step. SIGTERM / SIGINT finish the current step, save a checkpoint and exit with EXIT_PREEMPTED; a second
Ctrl-C stops at once with EXIT_KILLED (the last complete checkpoint stays valid).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from mian_jax import errors, files, interrupts
from mian_jax.config import Config
from mian_jax.data import pipeline
from mian_jax.errors import Diverged, RunError
from mian_jax.train import predictions, state as state_lib, workdir as workdir_lib
from mian_jax.train.checkpoint import CheckpointWriteError
from mian_jax.train.report import Reporter, StepTrace, events
from mian_jax.train.run import METRICS, SELECTED_ON, Run, check_devices, restore_first_readable

EXIT_PREEMPTED = errors.EXIT_PREEMPTED


class CheckpointNotWritten(RunError):
  """A checkpoint could not be written (launch.py: exit 2 at once, without the writer's shutdown noise)."""

  exit_at_once = True


def train_and_evaluate(config: Config, workdir: str | Path, fresh: bool = False) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint unless `fresh`), evaluates, and
  returns the final metrics (also written to result.json). One run per workdir at a time."""
  workdir = Path(workdir)
  mesh = check_devices(config)  # a wrong train.mesh or batch for these devices: an error line, no workdir made
  try:
    with workdir_lib.Lock(workdir, enabled=jax.process_index() == 0):
      trainer = _Trainer(Run.build(config, mesh=mesh), workdir, fresh)
      try:
        return trainer.train()
      finally:
        trainer.close()
  except (workdir_lib.WorkdirBusy, files.NotOurs) as e:
    raise RunError(str(e)) from None


def _logged_to(workdir: Path) -> int:
  """The last step workdir's metrics.jsonl logged (0 when it has none)."""
  path = workdir / "metrics.jsonl"
  steps = [e.get("step") for e in events(path)] if path.exists() else []
  return max([s for s in steps if isinstance(s, int)], default=0)


def evals_since_best(events: list[dict[str, Any]], split: str) -> int:
  """Evaluations of `split` since its best AUC (0: the latest is the best)."""
  aucs = [e["auc"] for e in events if e.get("split") == split and e.get("auc") is not None]
  aucs = [-1.0 if np.isnan(a) else a for a in aucs]
  return len(aucs) - 1 - int(np.argmax(aucs)) if aucs else 0


class _Trainer:
  """One training run in one workdir: `train()` is the loop; the methods are its steps."""

  def __init__(self, run: Run, workdir: Path, fresh: bool):
    self.run, self.config, self.workdir, self.fresh = run, run.config, workdir, fresh
    self.lead = jax.process_index() == 0
    self.selected_on = SELECTED_ON[self.config.data.validation]
    self.pending: list[dict[str, jax.Array]] = []  # step metrics not fetched yet
    self.rates: list[float] = []
    self.skipped: list[int] = []
    self.saved_to: tuple[tuple[int, int] | None, int] | None = None  # (checkpoints/'s id, its latest step)
    self.scored: tuple[int, tuple[np.ndarray, ...]] | None = None  # (step, its test rows) of the latest evaluation

  # ---------------------------------------------------------------- the loop
  def train(self) -> dict[str, Any]:
    t_start = time.perf_counter()
    run, config, workdir = self.run, self.config, self.workdir
    interrupts.set_phase("preparing the model (nothing written yet)")
    moved = orphaned = None
    if self.fresh and self.lead:
      moved = workdir_lib.set_aside_previous(workdir)
    elif self.lead and not workdir_lib.checkpoint_steps(workdir) and _logged_to(workdir) > 0:
      # A log without a checkpoint to resume (its checkpoints/ moved or deleted, or a run stopped before its
      # first one): training starts at step 0, and that log is kept beside it, not cut to step 0.
      orphaned = _logged_to(workdir), workdir_lib.set_aside_previous(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.ckpt = run.checkpoints(workdir)
    self.state, data_state, self.start, self.resumed = self._start()
    # (checkpoints/ as it is, its latest step): a folder moved away later is told apart from a new one
    self.saved_to = (self._folder_id(), self.start) if self.resumed else None
    if self.lead:  # checked the workdir's checkpoints first: a refused resume leaves a finished run as it was
      files.write_text(workdir / "config.json", config.to_json())
    # result.json is never deleted: a finished run's stays until this run finishes and replaces it.
    self.data_start = pipeline.resume_from(data_state, run.blocks_per_batch, config.train.reset_data_position)
    self.data_it = run.train_iterator(self.data_start, on_devices=True)
    if run.placement == "device":  # the evaluated splits too: a damaged shard is named before the first step
      for split in run.evaluated_splits():
        run.resident(split)
    self.report = report = Reporter(workdir, self.start, run.total_steps, config.train.log_every)
    for line in run.notes + self.start_lines:
      report.say(line)
    if self.fresh and self.lead and moved:
      report.say(f"--fresh: the previous run's files are in {moved} (delete that folder when no longer needed)")
    if orphaned:
      report.say(
        f"note: {workdir} holds no checkpoint, but its log reached step {orphaned[0]} (its checkpoints "
        f"folder was moved or deleted, or that run stopped before its first checkpoint); its files were "
        f"moved to {orphaned[1]} and training starts at step 0"
      )
    src, shapes = run.src, run.shapes.params
    counts = state_lib.num_params(shapes)
    report.say(
      f"{config.model.name}: {counts['tables']:,} embedding + {counts['dense']:,} dense parameters; "
      f"{src.rows('train'):,} train / {src.rows('valid'):,} validation / {src.rows('test'):,} test samples; "
      f"{run.total_steps} steps of {config.train.batch_size} on {run.mesh.devices.size} device(s)"
    )

    eval_every = config.train.eval_every or run.steps_per_epoch
    patience = config.train.early_stop_patience
    self.step, self.t_log = self.start, time.perf_counter()
    trace = StepTrace(config.train.profile_steps, workdir / "tensorboard")
    ends = self._call_ends(eval_every, trace)
    with interrupts.Deferred() as stop:
      while self.step < run.total_steps:
        steps = self._call_size(ends)
        inputs = self.data_it.take(steps)  # already on the devices (placed ahead, data.device_prefetch)
        trace.before(self.step + 1)
        with jax.transfer_guard("disallow"):
          self.state, step_metrics = run.train_call(self.state, inputs)
        self.pending.append(step_metrics)
        self.step += steps
        step = self.step
        if trace.after(step, step_metrics):
          report.say(
            f"profile of steps {config.train.profile_steps}: {workdir / 'tensorboard'} (TensorBoard's profile plugin)"
          )
        evaluating = step % eval_every == 0 or step == run.total_steps
        if (
          step % config.train.log_every == 0
          or evaluating
          or step % config.train.checkpoint_every == 0
          or stop.signal is not None
        ):
          self._flush()  # before any save: a checkpoint is written only after its steps were checked
        if evaluating:
          self._evaluate_and_save()
          self.t_log = time.perf_counter()  # the next rate counts training steps only (result.json: wall_s)
          if patience and evals_since_best(report.events(), self.selected_on) >= patience and step < run.total_steps:
            report.say(
              f"early stop at step {step}: {self.selected_on} auc has not improved for {patience} "
              f"evaluations (train.early_stop_patience)"
            )
            break
        elif step % config.train.checkpoint_every == 0:
          self._save()
          self.t_log = time.perf_counter()
        if stop.signal is not None:
          self._save()
          self.ckpt.close()
          report.close_bar()
          report.say(
            f"interrupted by {interrupts.Interrupted(stop.signal, '').name} at step {step} (training); "
            f"checkpoint saved in {workdir / 'checkpoints'}; run the same command again to resume"
          )
          raise SystemExit(EXIT_PREEMPTED)
    if trace.close(self.state):  # the run ended before the last traced step
      report.say(f"profile of steps {config.train.profile_steps} (up to step {self.step}): {workdir / 'tensorboard'}")
    report.close_bar()
    interrupts.set_phase("the final evaluation")
    previous = self._previous_result() if self.resumed and self.step == self.start else None
    if previous is None and not any(e["split"] == "test" and e["step"] == self.step for e in report.events()):
      self._evaluate_and_save()  # resumed after the end of a run that did not finish its evaluation
    result = previous or self._result(report.events(), time.perf_counter() - t_start)
    interrupts.set_phase("writing the test predictions")
    self._write_predictions(result["best_step"])
    # A rerun of a finished run trains nothing: its result.json (rates, wall time) stays as it was.
    report.summary(result, title=f"{config.experiment} / {config.model.name}", write=previous is None)
    report.close()
    self.ckpt.close()
    return result

  def close(self) -> None:
    """Stops the input path's threads (also after an error or an interrupt)."""
    if getattr(self, "data_it", None) is not None:
      self.data_it.close()

  # ---------------------------------------------------------------- its steps
  def _call_ends(self, eval_every: int, trace: StepTrace) -> list[int]:
    """The periods a train call must end on: logging, evaluation, checkpoints (every multiple), and the
    steps before and at the end of a profiled range."""
    t = self.config.train
    periods = [t.log_every, eval_every, t.checkpoint_every]
    self.profile_ends = [s for s in (trace.first - 1, trace.last) if s > 0]
    return periods

  def _call_size(self, periods: list[int]) -> int:
    """Steps in the next train call: train.steps_per_call when that many are left before the next step where
    something happens (a multiple of a period, a profile boundary, the run's last step), else 1. So a run
    compiles two programs at most (k steps and one step), and the steps before an event go one at a time."""
    s, k = self.step, self.config.train.steps_per_call
    ends = [(s // m + 1) * m for m in periods if m > 0] + [e for e in self.profile_ends if e > s]
    return k if min([self.run.total_steps] + ends) - s >= k else 1

  def _start(self):
    """(state, data position, first step, resumed?) from the latest readable checkpoint, else a new state."""
    self.start_lines: tuple[str, ...] = ()
    steps = sorted(self.ckpt.all_steps(), reverse=True)
    if not steps:
      return self.run.init_state(), None, 0, False
    try:
      with interrupts.phase("restoring the checkpoint"):
        state, data_state, start, lines = restore_first_readable(
          self.ckpt, steps, self.run.abstract_state(), self.run.identity(), self.workdir, set_aside=True
        )
    except Exception:
      self.ckpt.close()  # a manager left open prints Orbax's traceback at exit, after the error line
      raise
    self.start_lines = (*lines, f"resumed from step {start} ({self.workdir / 'checkpoints'})")
    return state, data_state, start, True

  def _folder_id(self) -> tuple[int, int] | None:
    try:
      st = os.stat(self.workdir / "checkpoints")
    except FileNotFoundError:
      return None
    return st.st_dev, st.st_ino

  def _moved_away(self) -> CheckpointNotWritten | None:
    """The error for a checkpoints/ folder moved or deleted during the run (it is no longer the folder the
    run's checkpoints went to), else None. Checked before and after every save: Orbax would otherwise start a
    new folder and the run go on without the one it had."""
    if self.saved_to is None or self._folder_id() == self.saved_to[0]:
      return None
    folder = self.workdir / "checkpoints"
    return CheckpointNotWritten(
      f"could not write checkpoint step {self.step}: {folder} was moved or deleted while the run was writing it "
      f"(it held the checkpoints up to step {self.saved_to[1]}); put it back and rerun to resume from them, or "
      f"rerun to start over (the log is kept)"
    )

  def _save(self, metrics: dict[str, float] | None = None) -> None:
    moved = self._moved_away()
    if moved:
      raise moved
    try:
      self.ckpt.save(
        self.step,
        self.state,
        self.data_it.get_state(),
        {**self.config.to_dict(), "identity": self.run.identity()},
        metrics,
      )
    except CheckpointWriteError as e:  # a full disk, a lost mount, permissions: the complete checkpoints stay
      moved = self._moved_away()
      if moved:
        raise moved from None
      raise CheckpointNotWritten(
        f"could not write checkpoint step {self.step} in {self.workdir / 'checkpoints'} ({_os_reason(e.cause)}); "
        f"free space or fix the directory, then rerun: {self._kept()} and training resumes from it (the "
        f"half-written one is removed)"
      ) from None
    moved = self._moved_away()  # moved while this one was written: it went to a new folder
    if moved:
      raise moved
    self.saved_to = (self._folder_id(), self.step)

  def _kept(self) -> str:
    step = self.ckpt.latest_step()
    return "no checkpoint was written yet" if step is None else f"the last checkpoint (step {step}) is kept"

  def _evaluate_and_save(self) -> None:
    """Evaluates the validation and test splits, logs them and saves a checkpoint carrying them."""
    evals, select, test_rows = self.run.evaluate_splits(self.state.params, self.step)
    self.scored = (self.step, test_rows)  # test_predictions.npz when this step is the one reported
    self.report.evaluation(self.step, evals)
    self._save({"select": select, **{f"{split}_{k}": evals[split][k] for split in evals for k in METRICS}})

  def _write_predictions(self, best: int) -> None:
    """test_predictions.npz of the reported checkpoint, unless the workdir has them already (train/predictions.py)."""
    path = self.workdir / predictions.FILE
    needed = predictions.step_of(path) != best if self.lead else False
    if jax.process_count() > 1:  # every process scores (the rows are gathered), so all must agree
      needed = bool(np.asarray(multihost_utils.process_allgather(np.array([needed]))).any())
    if not needed:
      return
    if self.scored is not None and self.scored[0] == best:
      labels, probs, groups = self.scored[1]
    else:
      labels, probs, groups = self._score_test(best)
      if labels is None:
        return
    if self.lead:
      predictions.write(path, best, labels, probs, groups)
      self.report.say(f"test predictions of checkpoint step {best}: {path}")

  def _score_test(self, best: int) -> tuple[np.ndarray | None, ...]:
    """The test split's (labels, probabilities, groups) by checkpoint `best` (restored unless it is the state
    held), or Nones (with a warning) when it cannot be read."""
    params = self.state.params
    if best != self.step:
      try:
        state, _, _, lines = restore_first_readable(
          self.ckpt, [best], self.run.abstract_state(), self.run.identity(), self.workdir, set_aside=False
        )
      except RunError as e:
        self.report.say(f"warning: no test predictions written: {e}")
        return None, None, None
      for line in lines:
        self.report.say(line)
      params = state.params
    return self.run.scores(params, "test")[0]

  def _batch_position(self, at_step: int) -> str:
    """Where the batch of training step `at_step` (1-based) comes from."""
    index = self.data_start + (at_step - self.start - 1)
    where = pipeline.batch_sources(self.run.src, self.config.train.seed, index, self.run.blocks_per_batch)
    shown = ", ".join(f"{Path(f).name} record {r}" for f, r in where[:8]) + (" ..." if len(where) > 8 else "")
    return f"data batch {index}: {shown}"

  def _flush(self) -> None:
    """Fetches the pending step metrics: stops at (or counts) non-finite steps, logs the rest."""
    if not self.pending:
      return
    calls, self.pending = jax.device_get(self.pending), []
    fetched = [{k: v[i] for k, v in call.items()} for call in calls for i in range(len(call["loss"]))]
    first = self.step - len(fetched) + 1
    bad = [first + i for i, m in enumerate(fetched) if not m["finite"]]
    if bad and self.config.train.on_nonfinite == "stop":
      self.report.close_bar()
      if self.resumed and bad[0] == self.start + 1:  # the restored state, not the data, is the likely cause
        raise Diverged(
          f"non-finite loss or gradients at step {bad[0]}, the first step after resuming from checkpoint "
          f"step {self.start}: that checkpoint may be damaged; move "
          f"{self.workdir / 'checkpoints' / str(self.start)} out of the way and rerun to resume from "
          f"the one before it"
        )
      raise Diverged(
        f"non-finite loss or gradients at step {bad[0]} ({self._batch_position(bad[0])}); that update "
        f"was not applied and {self._kept()}; lower train.learning_rate, check that data, or set "
        f"train.on_nonfinite=skip_batch"
      )
    if bad:
      self.skipped.extend(bad)
      self.report.say(
        f"skipped step(s) {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}: non-finite "
        f"loss or gradients ({self._batch_position(bad[0])}); {len(self.skipped)} skipped so far"
      )
    now = time.perf_counter()
    rate = len(fetched) * self.config.train.batch_size / (now - self.t_log)
    self.t_log = now
    self.rates.append(rate)
    good = [m for m in fetched if m["finite"]]
    loss = float(np.mean([m["loss"] for m in good])) if good else None
    grad_norm = float(np.mean([m["grad_norm"] for m in good])) if good else None
    self.report.train(self.step, len(fetched), rate, len(bad), loss, grad_norm, float(self.run.tx.lr(self.step)))

  def _previous_result(self) -> dict[str, Any] | None:
    """The workdir's result.json when it is this finished run's (written at this step), else None."""
    try:
      previous = files.read_json(self.workdir / "result.json")
    except (OSError, files.Damaged):
      return None
    needed = {
      "step",
      "auc",
      "gauc",
      "logloss",
      "best_step",
      "selected_on",
      "bayes_auc",
      "skipped_steps",
      "mapped_values",
    }
    if not isinstance(previous, dict) or not needed <= set(previous) or previous["step"] != self.step:
      return None
    return previous

  def _result(self, events: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """result.json: the test metrics of the best checkpoint (chosen on data.validation's split)."""
    best = self.ckpt.best_step()
    at_best = {e["split"]: e for e in events if e["step"] == best and e["split"] in ("valid", "test")}
    if "test" not in at_best:  # metrics.jsonl lost the best step's lines: report the latest evaluation
      best = max(e["step"] for e in events if e["split"] == "test")
      at_best = {e["split"]: e for e in events if e["step"] == best and e["split"] in ("valid", "test")}
    per_epoch = self.run.steps_per_epoch
    return {
      "step": self.step,
      "split": "test",
      **{k: at_best["test"][k] for k in METRICS},
      "best_step": best,
      "epoch": round(self.step / per_epoch, 2),
      "best_epoch": round(best / per_epoch, 2),
      "selected_on": self.selected_on,
      **({f"valid_{k}": at_best["valid"][k] for k in METRICS} if "valid" in at_best else {}),
      "bayes_auc": self.run.src.meta["stats"].get("bayes_auc"),
      "samples_per_s": float(np.median(self.rates)) if self.rates else None,
      "wall_s": wall_s,
      "workdir": str(self.workdir),
      "skipped_steps": len(self.skipped),
      "mapped_values": {"train": self.data_it.counts.as_dict(), "test": at_best["test"].get("mapped_values", {})},
    }


def _os_reason(e: Exception) -> str:
  """The operating system's words for a failed write ("File too large", "No space left on device"), as
  Orbax / TensorStore wrap them, else the error's first line."""
  text = str(e)
  found = re.search(r"([^:\]\[]+?) \[os_error_code='?\d+'?\]", text)
  if found:
    return found.group(1).strip()
  return getattr(e, "strerror", None) or (text.splitlines()[0][:200] if text else type(e).__name__)
