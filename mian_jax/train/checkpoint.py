"""Orbax checkpoints: model + optimizer + step + RNG (the TrainState), the grain iterator position and
the config, saved together as one step directory, atomically (Orbax writes to a temporary directory and
renames it when complete; a half-written one is never restored and is cleaned up on the next start).

Kept: the latest `keep` checkpoints and the best by test AUC (checkpoints saved at an evaluation carry
its metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


def _auc(metrics: dict[str, float]) -> float:
  return float(metrics["auc"])


class Checkpoints:
  def __init__(self, directory: str | Path, keep: int = 3):
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=_auc, n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=_auc, best_mode="max", cleanup_tmp_directories=True,
        enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                          item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict[str, Any], config: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    if step in self._manager.all_steps():  # e.g. a final save right after a periodic one
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config)),
        metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Restores `step` into the shapes and shardings of `abstract_state` (jax.ShapeDtypeStruct tree)."""
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
    return out.state, out.data, out.config

  def read_config(self, step: int) -> dict[str, Any]:
    return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `state` (from jax.eval_shape) placed with `shardings` (a tree like `state`)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
