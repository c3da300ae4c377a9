"""What the benchmarks share: synthetic batches of the commercial schema, a trainer step built from the
project's own pieces, timing (median of repeated timed calls after warm-up, compile time apart), the
machine's matmul FLOP/s, and the table / JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from mian_jax import xla_env

xla_env.apply()  # before JAX starts, as launch.py does

import jax
import jax.numpy as jnp
import numpy as np

from mian_jax import models  # noqa: F401  (the model list the benchmarks import from here)
from mian_jax.config import Config, ModelConfig, TrainConfig
from mian_jax.data import commercial
from mian_jax.schema import FeatureSchema
from mian_jax.train import partition
from mian_jax.train.run import Run

# Where report() writes: benchmarks/results, or $MIAN_JAX_BENCH_RESULTS (benchmarks/accelerator.sh gives
# each of its phases a folder of its own).
RESULTS = Path(os.environ.get("MIAN_JAX_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def schema(users: int = 20_000, history: int = 50) -> FeatureSchema:
  """The commercial schema (41 items, 8 user and 3 context fields) with the user id embedded."""
  return commercial.make_schema(users, history, embed_user_id=True)


LENGTHS = ("uniform", "commercial")


def history_lengths(rng: np.random.Generator, rows: int, max_len: int, lengths: str = "uniform") -> np.ndarray:
  """hist_len [rows]: uniform in [T/2, T] (the benchmarks' default, every history at least half full), or
  as the commercial generator draws them (data/commercial.py: Poisson of a per-user lognormal mean 18,
  capped at T; for T = 50: mean 22, median 18, 13% full)."""
  if lengths == "commercial":
    return np.minimum(rng.poisson(rng.lognormal(np.log(18), 0.9, rows)), max_len).astype(np.int32)
  return rng.integers(max_len // 2, max_len + 1, rows).astype(np.int32)


def batch(s: FeatureSchema, rows: int, seed: int = 0, lengths: str = "uniform") -> dict[str, np.ndarray]:
  """Random ids within every vocabulary; history lengths as `history_lengths` draws them."""
  rng = np.random.default_rng(seed)
  out = {
    "label": rng.integers(0, 2, rows).astype(np.float32),
    "weight": np.ones(rows, np.float32),
    "hist_len": history_lengths(rng, rows, s.max_len, lengths),
  }
  for f in s.features:
    if f.kind == "numeric":
      out[f.name] = rng.normal(size=rows).astype(np.float32)
    elif f.kind == "sequence":
      out[f.name] = rng.integers(1, f.vocab_size, (rows, s.max_len)).astype(np.int32)
    else:
      out[f.name] = rng.integers(1, f.vocab_size, rows).astype(np.int32)
  return out


def train_step(
  model_name: str,
  s: FeatureSchema,
  embedding_optimizer: str = "adam",
  embed_dim: int = 18,
  compute_dtype: str = "float32",
  devices=None,
  attention_kernel: str = "auto",
):
  """(jitted step, state, mesh) for one model, built by the trainer's own Run (without data)."""
  mesh = partition.make_mesh(devices or jax.devices()[:1])
  config = Config(
    model=ModelConfig(name=model_name, embed_dim=embed_dim, ibim_attention_kernel=attention_kernel),
    train=TrainConfig(embedding_optimizer=embedding_optimizer, learning_rate=1e-3, compute_dtype=compute_dtype),
  )
  run = Run.assemble(config, s, mesh, total_steps=1000)
  return run.train_step, run.init_state(seed=0), mesh


def time_step(
  step: Callable, state: Any, batches: list, repeats: int = 20, warmup: int = 3
) -> tuple[dict[str, float], Any]:
  """(compile time and the median / min seconds per step over `repeats` timed steps, the last state:
  the step donates its input state)."""
  t0 = time.perf_counter()
  state, metrics = step(state, batches[0])
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  for i in range(warmup):
    state, metrics = step(state, batches[i % len(batches)])
  jax.block_until_ready(metrics)
  times = []
  for i in range(repeats):
    t = time.perf_counter()
    state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return {"compile_s": compile_s, "median_s": statistics.median(times), "min_s": min(times)}, state


def step_flops(step: Callable, state: Any, batch_: dict) -> float:
  """FLOPs of one compiled step, from XLA's cost analysis (0 when the backend gives none)."""
  cost = step.lower(state, batch_).compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def matmul_flops_per_s(n: int = 2048, repeats: int = 10, dtype=jnp.float32) -> float:
  """This machine's large-matmul FLOP/s (the roofline the steps are compared with)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(a, a))
    times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times)


def machine() -> dict[str, Any]:
  d = jax.devices()[0]
  return {
    "backend": jax.default_backend(),
    "device": d.device_kind,
    "devices": jax.device_count(),
    "cpus": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
  }


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
  def fmt(v):
    if isinstance(v, float):
      return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def report(name: str, rows: list[dict[str, Any]], columns: list[str], extra: dict[str, Any] | None = None) -> None:
  """Prints the table and writes benchmarks/results/<name>.json (machine, rows, extra)."""
  text = table(rows, columns)
  print(f"\n## {name}\n\n{text}\n", flush=True)
  RESULTS.mkdir(parents=True, exist_ok=True)
  out = {"machine": machine(), "rows": rows, **(extra or {}), "table": text}
  (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
