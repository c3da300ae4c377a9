"""Benchmarks 1 and 2: train-step throughput of every model (batch 1024, history 50, embedding 18, on
synthetic batches, one device) and each step's share of this machine's matmul roofline.

    python -m benchmarks.step_throughput [--models mian,din] [--batch 1024] [--dtype bfloat16]
                                         [--lengths uniform | commercial]

A model may name IBIM's attention kernel after a colon (model.ibim_attention_kernel): `mian_paper:cudnn`.

History lengths (--lengths): uniform in [T/2, T] by default; `commercial` draws them as the commercial
data set does (mean 22 of 50): the sequence layers skip padding on CPU, so their speed depends on it.
"""

import argparse

from benchmarks.common import (
  LENGTHS,
  batch,
  jax,
  matmul_flops_per_s,
  models,
  partition,
  report,
  schema,
  step_flops,
  time_step,
  train_step,
)


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--models", default=",".join(models.names()))
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--history", type=int, default=50)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--lengths", choices=LENGTHS, default="uniform")
  args = p.parse_args(argv)
  peak = matmul_flops_per_s()
  s = schema(history=args.history)
  rows = []
  for name in args.models.split(","):
    model, _, kernel = name.partition(":")
    step, state, mesh = train_step(model, s, compute_dtype=args.dtype, attention_kernel=kernel or "auto")
    batches = [partition.to_global(batch(s, args.batch, seed=i, lengths=args.lengths), mesh) for i in range(4)]
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    t, state = time_step(step, state, batches, repeats=args.repeats)  # first: its first call measures compilation
    flops = step_flops(step, shapes, batches[0])
    achieved = flops / t["median_s"]
    rows.append(
      {
        "model": name,
        "samples_per_s": args.batch / t["median_s"],
        "step_ms": 1e3 * t["median_s"],
        "compile_s": t["compile_s"],
        "mflop_per_sample": flops / args.batch / 1e6,
        "gflop_per_s": achieved / 1e9,
        "roofline_share": achieved / peak,
      }
    )
    del state
  name = f"step_throughput_{args.dtype}" + ("" if args.lengths == "uniform" else f"_{args.lengths}")
  report(
    name,
    rows,
    ["model", "samples_per_s", "step_ms", "compile_s", "mflop_per_sample", "gflop_per_s", "roofline_share"],
    {
      "matmul_gflop_per_s": peak / 1e9,
      "batch": args.batch,
      "history": args.history,
      "lengths": args.lengths,
      "device": jax.devices()[0].device_kind,
    },
  )
  print(f"matmul roofline: {peak / 1e9:,.1f} GFLOP/s")


if __name__ == "__main__":
  main()
