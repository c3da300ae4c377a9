"""Pictures of a trained run (matplotlib, headless): the paper's Figure 6 (GIM attention heatmap)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mian_jax.config import Config  # noqa: E402
from mian_jax.data import pipeline  # noqa: E402
from mian_jax.models.mian import GIM_INPUTS  # noqa: E402

FIGURE6_ORDER = ("e_c", "R_icim", "e_u", "R_iuim", "e_i", "R_ibim", "e_b")  # the paper's columns
PLOTS = ("gim",)


def gim_weights(config: Config, workdir: str | Path, cases: int = 14, seed: int = 0) -> np.ndarray:
  """GIM attention [cases, 7] of `cases` random test samples, columns in FIGURE6_ORDER, from the best checkpoint."""
  import jax

  from mian_jax.train import loop, partition, step as step_lib

  model, src, params, mesh = loop.restore_best(config, workdir)
  if not all(getattr(model, f"use_{m}", False) for m in ("ibim", "iuim", "icim", "gim")):
    raise loop.TrainingError(f"--plot gim needs the full MIAN (model {config.model.name!r} lacks a module); "
                             f"use --model mian")
  rows = partition.per_process_batch(max(cases, config.train.eval_batch_size), mesh)
  _, batches = pipeline.eval_batches(src, "test", rows_per_process=rows, max_len=config.data.max_len,
                                     process_index=0, process_count=1)
  local = next(iter(batches))
  forward = jax.jit(lambda p, b: step_lib.forward(model, src.schema, p, b, False)[1]["gim"])
  weights = np.asarray(forward(params, partition.to_global(local, mesh)))
  real = np.flatnonzero(np.asarray(local["weight"]) > 0)
  pick = np.random.default_rng(seed).choice(real, size=min(cases, len(real)), replace=False)
  return weights[np.sort(pick)][:, [GIM_INPUTS.index(n) for n in FIGURE6_ORDER]]


def gim_heatmap(weights: np.ndarray, path: str | Path) -> Path:
  """Figure 6: one row per test case, one column per GIM input, the weight written in each cell."""
  fig, ax = plt.subplots(figsize=(7, 0.42 * len(weights) + 1.4))
  im = ax.imshow(weights, cmap="Blues", aspect="auto", vmin=0, vmax=max(0.5, float(weights.max())))
  ax.set_xticks(range(len(FIGURE6_ORDER)), [n.replace("_", "$_{", 1) + "}$" if n.startswith("e_") else n
                                            for n in FIGURE6_ORDER])
  ax.set_yticks(range(len(weights)), [str(i + 1) for i in range(len(weights))])
  ax.set_ylabel("test case")
  for (i, j), w in np.ndenumerate(weights):
    ax.text(j, i, f"{w:.2f}", ha="center", va="center", fontsize=7, color="white" if w > 0.3 else "black")
  fig.colorbar(im, ax=ax, fraction=0.04)
  ax.set_title("GIM attention weights")
  fig.tight_layout()
  path = Path(path)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
