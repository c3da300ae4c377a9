"""Benchmark 5: every sequence module alone, forward + backward under jit (gradients with respect to the
parameters and the float inputs, as in a train step), so that each module's cost is visible.

    python -m benchmarks.blocks [--batch 1024] [--history 50] [--rounds 5] [--torch [PYTHON]]

Shapes are the commercial benchmark's: B = 1024, T = 50, behaviour width E = 36 (two 18-wide item
fields), padding masked (lengths uniform in [T/2, T]). Modules: the Pre-LN Transformer encoder (one
block of 2 heads and FFN 2E, then the final LayerNorm: MIAN's IBIM), DIN's activation unit (attention MLP
80-40, unnormalised), the GRU and AUGRU scans (DIEN, state width E), the additive pools (MIAN's IBIM pool
over [e_i; h_t] and IUIM's field-wise pool over 8 fields), and the prediction towers (Dense 200-80 with
Dice, as DIN / DIEN / MIAN use, and with ReLU).

`--torch` adds PyTorch's encoder layer and GRU of the same shapes (benchmarks/blocks_torch.py, 2 threads),
run in a worker process under PYTHON (default: this interpreter; it needs torch, not JAX), timed in
the same rounds as the JAX modules, interleaved, so that both see the same machine load. Times are medians
over rounds x repeats; `cpu ms` is the process CPU time per call (both threads), steadier than wall time
on a shared machine. `jax_vs_torch` = torch wall ms / JAX wall ms (above 1: JAX is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from benchmarks.common import jax, jnp, np, report

from mian_jax.layers.attention import AdditivePool, FieldwiseAdditivePool
from mian_jax.layers.dice import DiceMLP
from mian_jax.layers.gru import MaskedRNN
from mian_jax.layers.mlp import MLP
from mian_jax.layers.target_attention import TargetAttention
from mian_jax.layers.transformer import Encoder

HERE = Path(__file__).parent
TORCH_MODULES = ("encoder", "gru")


def inputs(b: int, t: int, e: int, seed: int = 0) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  lens = rng.integers(t // 2, t + 1, b)
  mask = np.arange(t)[None, :] < lens[:, None]
  f = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))
  return {
    "mask": jnp.asarray(mask),
    "x": f(b, t, e) * mask[..., None],
    "q": f(b, e),
    "att": jnp.asarray(rng.uniform(size=(b, t)).astype(np.float32) * mask),
    "v": f(b, t, 2 * e) * mask[..., None],
    "fields": f(b, 8, e + e // 2),
    "tower": f(b, 400),
  }


def modules(b: int, t: int, e: int) -> dict[str, tuple[str, Callable]]:
  """name -> (shape, jitted forward + backward of (params, float inputs) -> gradients, with its arguments
  bound)."""
  d = inputs(b, t, e)
  mask = d["mask"]
  specs = {
    "encoder": (f"[{b},{t},{e}] 1 block, 2 heads", Encoder(1, 2, 2, True), ("x",), (mask,), False),
    "din_attention": (f"[{b},{t},{e}] MLP 80-40", TargetAttention((80, 40)), ("q", "x"), (mask,), False),
    "dien_attention": (
      f"[{b},{t},{e}] MLP 80-40, softmax",
      TargetAttention((80, 40), True, True),
      ("q", "x"),
      (mask,),
      False,
    ),
    "gru": (f"[{b},{t},{e}] H={e}", MaskedRNN(e), ("x",), (mask,), False),
    "augru": (f"[{b},{t},{e}] H={e}", MaskedRNN(e, attentional=True), ("x",), (mask, d["att"]), False),
    "additive_pool": (f"[{b},{t},{2 * e}]", AdditivePool(), ("v",), (mask,), False),
    "fieldwise_pool": (f"[{b},8,{e + e // 2}]", FieldwiseAdditivePool(), ("fields",), (), False),
    "dice_mlp": (f"[{b},400] 200-80", DiceMLP((200, 80)), ("tower",), (), True),
    "relu_mlp": (f"[{b},400] 200-80", MLP((200, 80)), ("tower",), (), True),
  }
  out = {}
  for name, (shape, module, float_names, rest, train) in specs.items():
    floats = tuple(d[n] for n in float_names)
    extra = (train,) if train else ()
    variables = module.init(jax.random.key(0), *floats, *rest, *extra)

    def loss(params, floats, module=module, variables=variables, rest=rest, extra=extra):
      y = module.apply({**variables, "params": params}, *floats, *rest, *extra, mutable=["batch_stats"])[0]
      y = y[0] if isinstance(y, tuple) else y  # (output, attention weights)
      return jnp.sum(jnp.square(y))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    out[name] = (shape, lambda grad=grad, p=variables["params"], floats=floats: grad(p, floats))
  return out


def time_jax(fn: Callable, repeats: int) -> tuple[list[float], list[float]]:
  wall, cpu = [], []
  for _ in range(repeats):
    c, t = time.process_time(), time.perf_counter()
    jax.block_until_ready(fn())
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  return wall, cpu


class TorchWorker:
  """benchmarks/blocks_torch.py in a process of its own (under `python`), asked for timings line by line."""

  def __init__(self, python: str, b: int, t: int, e: int):
    self.proc = subprocess.Popen(
      [python, str(HERE / "blocks_torch.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    self.ask(f"shape {b} {t} {e}")

  def ask(self, line: str) -> dict:
    self.proc.stdin.write(line + "\n")
    self.proc.stdin.flush()
    answer = self.proc.stdout.readline()
    if not answer:
      raise SystemExit(f"error: the torch worker stopped (is torch installed for {self.proc.args[0]}?)")
    return json.loads(answer)

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--history", type=int, default=50)
  p.add_argument("--width", type=int, default=36)
  p.add_argument("--rounds", type=int, default=5, help="rounds over every module (interleaving JAX and torch)")
  p.add_argument("--repeats", type=int, default=3, help="timed calls per module and round")
  p.add_argument("--modules", default="", help="comma-separated subset (default: all)")
  p.add_argument(
    "--torch",
    nargs="?",
    const=sys.executable,
    metavar="PYTHON",
    help="also time PyTorch's encoder layer and GRU under this interpreter (default: this one)",
  )
  args = p.parse_args(argv)
  b, t, e = args.batch, args.history, args.width
  todo = modules(b, t, e)
  if args.modules:
    todo = {k: v for k, v in todo.items() if k in args.modules.split(",")}
  worker = TorchWorker(args.torch, b, t, e) if args.torch else None
  times = {name: {"jax": ([], []), "torch": ([], [])} for name in todo}
  compile_s = {}
  for name, (_, fn) in todo.items():  # compile and warm up
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s[name] = time.perf_counter() - t0
    jax.block_until_ready(fn())
  for _ in range(args.rounds):
    for name, (_, fn) in todo.items():
      wall, cpu = time_jax(fn, args.repeats)
      times[name]["jax"][0].extend(wall)
      times[name]["jax"][1].extend(cpu)
      if worker and name in TORCH_MODULES:
        got = worker.ask(f"{name} {args.repeats}")
        times[name]["torch"][0].extend(got["wall"])
        times[name]["torch"][1].extend(got["cpu"])
  if worker:
    worker.close()
  ms = lambda xs: 1e3 * statistics.median(xs) if xs else None
  rows = []
  for name, (shape, _) in todo.items():
    (jw, jc), (tw, tc) = times[name]["jax"], times[name]["torch"]
    row = {"module": name, "shape": shape, "jax_ms": ms(jw), "jax_cpu_ms": ms(jc), "compile_s": compile_s[name]}
    if tw:
      row.update(torch_ms=ms(tw), torch_cpu_ms=ms(tc), jax_vs_torch=ms(tw) / ms(jw))
    rows.append(row)
  columns = (
    ["module", "shape", "jax_ms", "jax_cpu_ms"]
    + (["torch_ms", "torch_cpu_ms", "jax_vs_torch"] if worker else [])
    + ["compile_s"]
  )
  report(
    "blocks", rows, columns, {"batch": b, "history": t, "width": e, "rounds": args.rounds, "repeats": args.repeats}
  )


if __name__ == "__main__":
  main()
