"""Pictures (matplotlib, headless): the paper's Figure 6 (GIM attention heatmap), a run's training curves and a
sweep's AUC comparison. This module only draws what it is given (the GIM weights come from
`predict.gim_weights`); it imports nothing of the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mian_jax import files


def _pyplot():
  """matplotlib.pyplot on the headless Agg backend, imported on the first drawing: its import is ~0.35 s of
  every launch.py process's start-up, and many of them never draw (stopped, --eval, --predict, errors)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


PLOTS = ("gim",)


def _save(fig, path: str | Path, dpi: int) -> None:
  """The figure as a PNG at `path`, written atomically (a failed write, a full disk say, names `path`)."""
  files.write_with(path, lambda f: fig.savefig(f, dpi=dpi, format="png"), binary=True)


def gim_heatmap(weights: np.ndarray, path: str | Path, columns: tuple[str, ...]) -> Path:
  """Figure 6: one row per test case, one column per GIM input, the weight written in each cell."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(1.0 * len(columns) + 1, 0.42 * len(weights) + 1.4))
  im = ax.imshow(weights, cmap="Blues", aspect="auto", vmin=0, vmax=max(0.5, float(weights.max())))
  ax.set_xticks(range(len(columns)), [n.replace("_", "$_{", 1) + "}$" if n.startswith("e_") else n for n in columns])
  ax.set_yticks(range(len(weights)), [str(i + 1) for i in range(len(weights))])
  ax.set_ylabel("test case")
  for (i, j), w in np.ndenumerate(weights):
    ax.text(j, i, f"{w:.2f}", ha="center", va="center", fontsize=7, color="white" if w > 0.3 else "black")
  fig.colorbar(im, ax=ax, fraction=0.04)
  ax.set_title("GIM attention weights")
  fig.tight_layout()
  path = Path(path)
  _save(fig, path, 120)
  plt.close(fig)
  return path


def sweep_auc(groups: list[dict], path: str | Path, title: str = "") -> Path:
  """A sweep's test AUC per setting: a bar at the mean over seeds, a line for ± std, a dot per trial."""
  groups = [g for g in groups if g["n"]]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 0.45 * max(1, len(groups)) + 1.3))
  for y, g in enumerate(groups):
    mean, std = g["auc"]
    ax.barh(y, mean, color="#4c72b0", alpha=0.6)
    if std is not None:
      ax.errorbar(mean, y, xerr=std, color="black", capsize=3)
    ax.plot([r["auc"] for r in g["ok"]], [y] * g["n"], "o", color="black", markersize=3)
    ax.text(max([mean + (std or 0.0)] + [r["auc"] for r in g["ok"]]), y, f"  {mean:.4f}", va="center", fontsize=8)
  ax.set_yticks(range(len(groups)), [g["label"] for g in groups])
  aucs = [r["auc"] for g in groups for r in g["ok"]]
  if aucs:
    span = max(aucs) - min(aucs)
    ax.set_xlim(max(0.0, min(aucs) - max(0.02, span)), min(1.0, max(aucs) + max(0.03, 0.6 * span)))
  ax.invert_yaxis()
  ax.set_xlabel("test AUC (bar: mean over seeds, line: ± std, dots: trials)")
  ax.set_title(f"sweep {title}" if title else "sweep")
  fig.tight_layout()
  path = Path(path)
  _save(fig, path, 110)
  plt.close(fig)
  return path


def training_curves(metrics_jsonl: str | Path, path: str | Path, title: str = "") -> Path:
  """The run's curves from metrics.jsonl: training loss, and validation / test AUC and logloss, by step."""
  events = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
  train = [e for e in events if e.get("split") == "train" and e.get("loss") is not None]
  evals = {split: [e for e in events if e.get("split") == split] for split in ("valid", "test")}
  plt = _pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
  style = lambda rows: "-o" if len(rows) < 30 else "-"
  axes[0].plot([e["step"] for e in train], [e["loss"] for e in train], style(train), markersize=3)
  axes[0].set_title("training loss")
  for ax, key in ((axes[1], "auc"), (axes[2], "logloss")):
    for split, rows in evals.items():
      if rows:
        ax.plot([e["step"] for e in rows], [e[key] for e in rows], style(rows), markersize=3, label=split)
    ax.set_title(f"{'AUC' if key == 'auc' else key} (validation and test)")
    ax.legend(fontsize=8)
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = Path(path)
  _save(fig, path, 110)
  plt.close(fig)
  return path
