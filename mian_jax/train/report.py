"""What a run tells the user, in one place: metrics.jsonl, TensorBoard scalars, the progress (a bar on a
terminal, a line every train.log_every steps in a log file: mian_jax/progress.py), the console lines and the
final summary with curves.png. The loop calls it; it computes nothing.

- `metrics.jsonl`: one JSON object per event (`{"step", "split": train | valid | test, ...}`), appended;
  on resume the events a killed run logged after its last checkpoint are dropped, and so is a line torn by
  a full disk or a kill (with a one-line warning). A failed write names the file.
- TensorBoard (`<workdir>/tensorboard`, tags `train/...`, `valid/...`, `test/...`); after a resume it
  shows the dropped steps twice until it reloads.
- Written by process 0 only; the other processes' Reporter prints and writes nothing.
- `StepTrace`: train.profile_steps' jax.profiler trace, into `<workdir>/tensorboard` (process 0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mian_jax import files, plots, progress, summaries
from mian_jax.config import profile_range


def fmt(value: float | None) -> str:
  """A metric for a log line: 4 decimals, or `undefined` (the AUC of a split with one class)."""
  return "undefined" if value is None or np.isnan(value) else f"{value:.4f}"


def metrics_line(evals: dict[str, dict[str, float]]) -> str:
  return " | ".join(
    f"{split} auc={fmt(m['auc'])} gauc={fmt(m['gauc'])} logloss={fmt(m['logloss'])}" for split, m in evals.items()
  )


def events(path: Path) -> list[dict[str, Any]]:
  """metrics.jsonl's events (lines that cannot be read are skipped)."""
  return files.read_jsonl(path)[0]


class Reporter:
  def __init__(self, workdir: Path, resume_step: int, total_steps: int, log_every: int = 1):
    self.workdir = workdir
    self.path = workdir / "metrics.jsonl"
    self.lead = jax.process_index() == 0
    self._tb = None
    if self.lead:
      if self.path.exists():
        kept, torn = files.read_jsonl(self.path)
        if torn:
          self.say(
            f"warning: dropped {torn} unreadable line(s) of {self.path} (a write cut short by a full disk or a kill)"
          )
        kept = [e for e in kept if isinstance(e.get("step"), int) and e["step"] <= resume_step]
        files.write_text(self.path, "".join(json.dumps(e) + "\n" for e in kept))
      self._tb = summaries.Scalars(workdir / "tensorboard")
    self.bar = progress.Progress(total_steps, "step", initial=resume_step, every=log_every)

  def say(self, message: str) -> None:
    progress.say(message)

  def write(self, event: dict[str, Any], **extra: float) -> None:
    """One event into metrics.jsonl and TensorBoard (`extra`: TensorBoard only)."""
    if self.lead:
      files.append_jsonl(self.path, event)
      scalars = {f"{event['split']}/{k}": v for k, v in {**event, **extra}.items() if k not in ("step", "split")}
      self._tb.write(event["step"], scalars)
      self._tb.flush()

  def train(
    self,
    step: int,
    steps: int,
    rate: float,
    skipped: int,
    loss: float | None,
    grad_norm: float | None,
    learning_rate: float,
  ) -> None:
    """The training metrics of the `steps` steps up to `step`."""
    event: dict[str, Any] = {"step": step, "split": "train", "samples_per_s": rate, "skipped": skipped}
    if loss is not None:
      event.update(loss=loss, grad_norm=grad_norm)
    self.write(event, learning_rate=learning_rate)
    self.bar.update(steps, *((f"loss={loss:.4f}",) if loss is not None else ()), f"{rate:,.0f} samples/s")

  def evaluation(self, step: int, evals: dict[str, dict[str, float]]) -> None:
    for split, m in evals.items():
      self.write({"step": step, "split": split, **m})
    self.say(f"step {step}: {metrics_line(evals)}")

  def events(self) -> list[dict[str, Any]]:
    return events(self.path)

  def close_bar(self) -> None:
    self.bar.close()

  def close(self) -> None:
    self.bar.close()
    if self._tb is not None:
      self._tb.close()

  def summary(self, result: dict[str, Any], title: str, write: bool = True) -> None:
    """The end of a finished run: result.json (unless `write` is False: it holds `result` already),
    curves.png and the closing lines (the last one is `final test auc=... (best valid auc=... at step N)`)."""
    if self.lead:  # a finished run: sweeps skip it, summaries read it
      if write:
        files.write_json(self.workdir / "result.json", result)
      curves = plots.training_curves(self.path, self.workdir / "curves.png", title=title)
      best = result["best_step"]
      self.say(f"best checkpoint: step {best} in {self.workdir / 'checkpoints' / str(best)}")
      self.say(f"curves: {curves}; TensorBoard: tensorboard --logdir {self.workdir / 'tensorboard'}")
    if result["skipped_steps"]:
      self.say(
        f"skipped {result['skipped_steps']} step(s) with a non-finite loss or gradients (train.on_nonfinite=skip_batch)"
      )
    for where, counts in (
      ("training data", result["mapped_values"]["train"]),
      ("test data", result["mapped_values"]["test"]),
    ):
      if counts:
        self.say(
          f"read as OOV id 0 / 0.0 in the {where} (data.oov=map): "
          + ", ".join(f"{n:,} {what}" for what, n in sorted(counts.items()))
        )
    line = f"final test auc={fmt(result['auc'])} gauc={fmt(result['gauc'])} logloss={fmt(result['logloss'])}"
    on = result["selected_on"]
    if on is None:
      line += f" (latest evaluation, step {result['best_step']}; data.validation=none)"
    else:
      line += (
        f" (best {on} auc={fmt(result[f'{on}_auc'] if on == 'valid' else result['auc'])} at step {result['best_step']})"
      )
    if result["bayes_auc"] is not None:
      line += f" (bayes auc={result['bayes_auc']:.4f})"
    self.say(line)


class StepTrace:
  """A jax.profiler trace of the training steps train.profile_steps = "A:B" names (1-based, both included;
  those of them this run executes) into `logdir`, where TensorBoard's profile plugin finds it."""

  def __init__(self, spec: str, logdir: Path):
    self.first, self.last = profile_range(spec) if spec else (0, -1)
    self.logdir = logdir
    self.active = False

  def before(self, step: int) -> None:
    """Called before training step `step` runs."""
    if not self.active and self.first <= step <= self.last and jax.process_index() == 0:
      jax.profiler.start_trace(str(self.logdir))
      self.active = True

  def after(self, step: int, outputs: Any) -> bool:
    """Called after step `step` was dispatched (its outputs); True when that ended the trace."""
    return self.close(outputs) if step >= self.last else False

  def close(self, outputs: Any = None) -> bool:
    """Ends the trace once `outputs` are computed; True when a trace was running."""
    if not self.active:
      return False
    jax.block_until_ready(outputs)  # the traced steps' work, not only their dispatch
    jax.profiler.stop_trace()
    self.active = False
    return True
