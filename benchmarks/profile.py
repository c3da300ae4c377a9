"""Where one model's train step spends its time: the step runs under `jax.profiler` for a few steps, the
trace is read back (jax.profiler.ProfileData), and the XLA ops are summed per step, each named by the
model code it came from (the HLO's op_name metadata: the Flax module path, `bwd` for the backward pass).
Two tables: the top ops, and the time per model module.

    python -m benchmarks.profile MODEL [--batch 1024] [--steps 5] [--top 25] [--lengths commercial] [--trace-dir DIR]

On CPU the ops are those the thunk executor runs (on 2 cores two may run at once, so op time can exceed
the wall time); on a GPU / TPU the device's "XLA Ops" line. The trace folder (kept with --trace-dir)
opens in TensorBoard's profile plugin.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import LENGTHS, batch, jax, partition, report, schema, table, train_step

HLO_OP = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', re.M)
HLO_CALL = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?calls=%?([\w.\-]+)', re.M)
HLO_COMPUTATION = re.compile(r'^%?([\w.\-]+) [^\n]*\{\n(.*?)^\}', re.M | re.S)
# Executor bookkeeping, Python frames and the ends of asynchronous ops are not ops; a loop's or a
# conditional's own event spans its body's ops, which are counted themselves.
SKIPPED = ("ThunkExecutor", "ThreadpoolListener", "PjRt", "SlinkyThreadPool", "$", "end: ")
CONTAINER = re.compile(r"^(while|conditional|cond|call)(\.\d+)*(\.clone)?$")
NOT_MODULES = {"while", "body", "cond", "closed_call", "checkpoint", "remat", "rematted_computation", "map"}


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the op_name of the model code it came from: its own metadata, else (a
  fusion without any) that of the last instruction of the computation it calls that has one."""
  out: dict[str, str] = {}
  for name, op_name in HLO_OP.findall(hlo_text):
    out.setdefault(name, op_name)
  inner = {c: HLO_OP.findall(body) for c, body in HLO_COMPUTATION.findall(hlo_text)}
  for name, called in HLO_CALL.findall(hlo_text):
    if name not in out and inner.get(called):
      out[name] = inner[called][-1][1]
  return out


def readable(op_name: str) -> str:
  """`jit(train_step)/transpose(jvp(MIAN))/ibim_encoder/block0/mha/dot_general` ->
  `bwd ibim_encoder/block0/mha/dot_general`."""
  backward = "transpose(" in op_name
  parts = [p for p in op_name.split("/") if not p.startswith(("jit(", "jvp(", "transpose(", "checkpoint", "pjit"))]
  return ("bwd " if backward else "") + "/".join(parts)


def module_of(op_name: str, depth: int = 2) -> str:
  """The model module an op belongs to (its path without the primitive), at most `depth` levels."""
  parts = [
    p
    for p in readable(op_name).removeprefix("bwd ").split("/")
    if p not in NOT_MODULES and not p.startswith(("branch_", "vmap("))
  ]
  return "/".join(parts[:-1][:depth]) or "(step: embedding, loss, optimizer)"


def op_events(trace_dir: Path) -> dict[str, float]:
  """Total nanoseconds per XLA op name in the trace (device planes when there are any, else the host's
  XLA threads)."""
  path = next(trace_dir.rglob("*.xplane.pb"))
  planes = list(jax.profiler.ProfileData.from_file(str(path)).planes)
  devices = [p for p in planes if p.name.startswith("/device:")]
  total: dict[str, float] = collections.Counter()
  # A GPU trace without the "XLA Ops" line (CUPTI's kernels only) is read from its stream lines.
  wanted = ("XLA Ops",) if any(l.name == "XLA Ops" for p in devices for l in p.lines) else ("Stream",)
  for plane in devices or planes:
    for line in plane.lines:
      if devices and not line.name.startswith(wanted):
        continue
      if not devices and not line.name.startswith("tf_XLA"):
        continue
      for ev in line.events:
        if not ev.name.startswith(SKIPPED) and not CONTAINER.match(ev.name):
          total[ev.name] += ev.duration_ns
  return total


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("model")
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--history", type=int, default=50)
  p.add_argument("--steps", type=int, default=5, help="traced steps (after 3 untraced ones)")
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--lengths", choices=LENGTHS, default="uniform", help="history lengths (benchmarks/common.py)")
  p.add_argument("--trace-dir", help="keep the trace here (default: a temporary folder, removed)")
  args = p.parse_args(argv)
  s = schema(history=args.history)
  step, state, mesh = train_step(args.model, s, compute_dtype=args.dtype)
  batches = [partition.to_global(batch(s, args.batch, seed=i, lengths=args.lengths), mesh) for i in range(2)]
  names = op_names(step.lower(state, batches[0]).compile().as_text())
  for i in range(3):
    state, metrics = step(state, batches[i % 2])
  jax.block_until_ready(metrics)
  trace_dir = Path(args.trace_dir or tempfile.mkdtemp(prefix="mian_jax_profile_"))
  t = time.perf_counter()
  with jax.profiler.trace(str(trace_dir)):
    for i in range(args.steps):
      state, metrics = step(state, batches[i % 2])
    jax.block_until_ready(metrics)
  wall_ms = 1e3 * (time.perf_counter() - t) / args.steps
  per_op = op_events(trace_dir)
  if not args.trace_dir:
    shutil.rmtree(trace_dir, ignore_errors=True)
  total_ms = sum(per_op.values()) / 1e6 / args.steps
  if not total_ms:
    path = next(trace_dir.rglob("*.xplane.pb"), None)
    for plane in jax.profiler.ProfileData.from_file(str(path)).planes if path else []:
      print(f"plane {plane.name}: " + ", ".join(f"{l.name} ({sum(1 for _ in l.events)})" for l in plane.lines))
    raise SystemExit("error: the trace holds no XLA op events (is the profiler supported on this backend?)")
  rows = [
    {
      "op": op,
      "ms": ns / 1e6 / args.steps,
      "share": ns / 1e6 / args.steps / total_ms,
      "from": readable(names.get(op, "?")),
    }
    for op, ns in per_op.most_common(args.top)
  ]
  modules: dict[str, float] = collections.Counter()
  for op, ns in per_op.items():
    modules[module_of(names.get(op, ""))] += ns / 1e6 / args.steps
  by_module = [{"module": m, "ms": ms, "share": ms / total_ms} for m, ms in modules.most_common(args.top)]
  extra = {
    "model": args.model,
    "batch": args.batch,
    "wall_ms_per_step": wall_ms,
    "op_ms_per_step": total_ms,
    "by_module": by_module,
  }
  report(f"profile_{args.model}", rows, ["op", "ms", "share", "from"], extra)
  print(f"{args.model}: {wall_ms:.1f} ms per traced step (wall), {total_ms:.1f} ms of XLA op time per step\n")
  print(table(by_module, ["module", "ms", "share"]))


if __name__ == "__main__":
  main()
