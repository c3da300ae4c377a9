"""The test predictions of a run's reported checkpoint: `test_predictions.npz` in its workdir.

Every training run writes them when it ends, from the checkpoint its result.json reports (the best on
validation, or the latest with data.validation=none); rerunning a finished run that lacks them (or has
them for another step) writes them from that checkpoint without training. One row per real test row, in
the split's order (the same for every model of a data set): `label` (float32), `prob` (float32), `group`
(int64, the row's user) and `step`. Sweep tables read them for their confidence intervals
(mian_jax/significance.py).
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from mian_jax import files

FILE = "test_predictions.npz"


class Unreadable(ValueError):
  """The file exists but is not a whole predictions file."""


@dataclasses.dataclass(frozen=True)
class Predictions:
  step: int
  label_n: np.ndarray
  prob_n: np.ndarray
  group_n: np.ndarray


def write(path: str | Path, step: int, labels_n: np.ndarray, probs_n: np.ndarray, groups_n: np.ndarray) -> None:
  """Atomically (a reader sees the old file or the new one)."""
  arrays = {
    "step": np.int64(step),
    "label": np.asarray(labels_n, np.float32),
    "prob": np.asarray(probs_n, np.float32),
    "group": np.asarray(groups_n, np.int64),
  }
  files.write_with(path, lambda f: np.savez(f, **arrays), binary=True)


def read(path: str | Path) -> Predictions:
  """The file's predictions; FileNotFoundError when there is none, Unreadable when it is damaged."""
  path = Path(path)
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in ("step", "label", "prob", "group")}
  except FileNotFoundError:
    raise
  except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise Unreadable(
      f"{path} is not a whole predictions file ({type(e).__name__}: {e}); rerun the run's command to write it again"
    ) from None
  n = len(arrays["label"])
  if arrays["step"].shape != () or any(arrays[k].shape != (n,) for k in ("prob", "group")):
    raise Unreadable(f"{path}: its arrays do not have one value per row; rerun the run's command to write it again")
  return Predictions(int(arrays["step"]), arrays["label"], arrays["prob"], arrays["group"])


def step_of(path: str | Path) -> int | None:
  """The checkpoint step the file's predictions come from; None when there is no readable file."""
  try:
    with np.load(path, allow_pickle=False) as z:  # an npz reads its arrays one by one: the step alone
      step = z["step"]
  except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile):
    return None
  return int(step) if step.shape == () else None
