"""PyTorch's counterparts of benchmarks/blocks.py's modules, timed in a worker process that imports no JAX
(it may run under another interpreter: `blocks.py --torch PYTHON`). Each line read from stdin,
`MODULE REPEATS`, is answered with one JSON line {"wall": [s, ...], "cpu": [s, ...]} of forward + backward
calls (2 threads, like the JAX side); `shape B T E` first sets the shapes.

  encoder  nn.TransformerEncoderLayer(E, 2 heads, FFN 2E, dropout 0, norm_first=True, batch_first=True)
           with the padding as src_key_padding_mask, then the final LayerNorm and the padding zeroed
           (what layers/transformer.Encoder computes)
  gru      nn.GRU(E, E, batch_first=True) over the padded [B, T, E] (every step, as the JAX scan)
"""

from __future__ import annotations

import json
import sys
import time

import torch


def build(name: str, b: int, t: int, e: int):
  g = torch.Generator().manual_seed(0)
  lens = torch.randint(t // 2, t + 1, (b,), generator=g)
  keep = (torch.arange(t)[None, :] < lens[:, None]).float()
  x = torch.randn(b, t, e, generator=g, requires_grad=True)
  if name == "encoder":
    layer = torch.nn.TransformerEncoderLayer(e, 2, 2 * e, dropout=0.0, norm_first=True, batch_first=True)
    final = torch.nn.LayerNorm(e, eps=1e-6)
    pad = keep == 0
    return lambda: (final(layer(x, src_key_padding_mask=pad)) * keep[..., None]).square().sum().backward()
  if name == "gru":
    gru = torch.nn.GRU(e, e, batch_first=True)
    return lambda: gru(x)[0].square().sum().backward()
  raise KeyError(name)


def main():
  torch.set_num_threads(2)
  shape, cache = (1024, 50, 36), {}
  for line in sys.stdin:
    words = line.split()
    if words[0] == "shape":
      shape, cache = tuple(int(w) for w in words[1:]), {}
      print(json.dumps({"ok": True}), flush=True)
      continue
    name, repeats = words[0], int(words[1])
    try:
      if name not in cache:
        cache[name] = build(name, *shape)
        for _ in range(3):  # warm-up
          cache[name]()
    except KeyError:
      print(json.dumps({"wall": [], "cpu": []}), flush=True)
      continue
    wall, cpu = [], []
    for _ in range(repeats):
      c, t = time.process_time(), time.perf_counter()
      cache[name]()
      wall.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
    print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


if __name__ == "__main__":
  main()
