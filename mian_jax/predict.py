"""A trained run, used without training: evaluate its best checkpoint, or score records with it.

- `evaluate_best(config, workdir)`: the test-split metrics of the best checkpoint (the latest when
  none was evaluated), computed exactly as at the end of training.
- `predict(config, workdir, path, out)`: one probability per record of `path`, in input order, written
  as CSV (`row,user,probability`), written atomically; an existing `out` is replaced only when it is an
  earlier --predict output (else refused: the project never overwrites what it did not write). `path` is either
  * a data set folder as every converter writes it (meta.json + ArrayRecord shards; e.g. the commercial
    generator's output or a converted MovieLens set): every record of its test split, in file order;
    its features and vocabulary sizes must be the run's, else it is refused naming the difference; or
  * for experiments converted from files (books, electronics, custom), a file or a folder of files in
    the layout the experiment reads (the same columns as its training files, label included):
    every row, in file order, encoded with the run's vocabularies and numeric standardisation
    (`tabular.encode_records`; values never seen in training are OOV id 0);
  * for movielens, a GroupLens folder (ml-100k or ml-1m layout): every rating, in the ratings file's
    line order, with the same user's earlier ratings there as its history (`movielens.encode_records`).
  Ids outside a feature's vocabulary and non-finite numbers in the shards follow `data.oov` (map: read
  as 0 and counted; error: refused). One process.
  `user` is the record's user (the field gAUC groups by, `pipeline.Source.group_key`): its raw key where
  a vocabulary decodes it (`vocab/<user vocabulary>.json` of the scored data set, else of the run's:
  value k has id k + 1; then the tabular converters' `user_groups.json`: the keys missing from it, key k
  has group vocabulary size + 1 + k), else the group index itself: the generated commercial set's user
  id, 0 for an empty user key (tabular) or for a MovieLens user absent from the training ratings.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mian_jax import data, files, interrupts, progress
from mian_jax.config import Config
from mian_jax.data import pipeline, tabular
from mian_jax.export import vocab_of
from mian_jax.errors import DataError
from mian_jax.schema import FeatureSchema
from mian_jax.errors import RunError
from mian_jax.models.mian import FIGURE6_ORDER, OPTION_INPUTS, gim_inputs
from mian_jax.train import partition, step as step_lib
from mian_jax.train.run import Run


def evaluate_best(config: Config, workdir: str | Path) -> tuple[int, dict[str, Any]]:
  """(checkpoint step, metrics) of the best checkpoint on the test split."""
  run, params, step = Run.restore(config, workdir)
  return step, run.evaluate(params)


def gim_weights(
  config: Config, workdir: str | Path, cases: int = 14, seed: int = 0
) -> tuple[np.ndarray, tuple[str, ...]]:
  """(GIM attention [cases, L] of `cases` random test samples, the L column names: FIGURE6_ORDER's, then the
  options' inputs, OPTION_INPUTS' order) from the best checkpoint; L = the GIM inputs the model has (data
  without user or context fields has fewer), so each row sums to 1.
  plots.gim_heatmap draws them (the paper's Figure 6)."""
  run, params, _ = Run.restore(config, workdir)
  if not getattr(run.model, "use_gim", False):
    raise RunError(f"--plot gim needs a MIAN with GIM (model {config.model.name!r} has none); use --model mian")
  schema = run.schema
  names = gim_inputs(run.model, len(schema.group("user")), len(schema.group("context")))
  rows = partition.per_process_batch(max(cases, run.config.train.eval_batch_size), run.mesh, "train.eval_batch_size")
  _, batches = pipeline.eval_batches(
    run.src, "test", rows_per_process=rows, max_len=run.config.data.max_len, process_index=0, process_count=1
  )
  local = next(iter(batches))
  forward = jax.jit(lambda p, b: step_lib.forward(run.model, schema, p, b, False)[1]["gim"])
  weights = np.asarray(forward(params, partition.to_global(local, run.mesh)))
  real = np.flatnonzero(np.asarray(local["weight"]) > 0)
  pick = np.random.default_rng(seed).choice(real, size=min(cases, len(real)), replace=False)
  shown = tuple(n for n in FIGURE6_ORDER + OPTION_INPUTS if n in names)
  return weights[np.sort(pick)][:, [names.index(n) for n in shown]], shown


def open_records(path: str | Path, schema: FeatureSchema) -> pipeline.Source:
  """The data set folder at `path`, checked against the run's schema."""
  path = Path(path)
  meta_file = path / "meta.json"
  if not meta_file.exists():
    raise DataError(
      f"{path}: no meta.json; --predict reads a data set folder as the converters write it "
      f"(meta.json and *.array_record shards)"
    )
  meta = json.loads(meta_file.read_text())
  theirs = FeatureSchema.from_dict(meta["schema"])
  mine = {f.name: f for f in schema.features if f.embed}
  other = {f.name: f for f in theirs.features}
  for name, f in mine.items():
    if name not in other:
      raise DataError(f"{meta_file}: has no feature {name!r}, which the model reads")
    if (other[name].kind, other[name].vocab_size) != (f.kind, f.vocab_size):
      raise DataError(
        f"{meta_file}: feature {name!r} is {other[name].kind} with vocabulary {other[name].vocab_size}, "
        f"the model's is {f.kind} with vocabulary {f.vocab_size}; encode the records with the "
        f"training data's vocabularies"
      )
  if not meta["files"].get("test"):
    raise DataError(f"{meta_file}: no test split to score")
  return pipeline.Source(path, theirs, meta)  # decoded as written (its non-model fields may differ)


def _as_data_set(config: Config, src: pipeline.Source, path: Path) -> Path:
  """`path` itself when it is a data set folder, else the data set its files encode to (the data set's
  source decides: `mian_jax.data.DataSource.encode_records`)."""
  return data.source_for(config.data).encode_records(config.data, src, path)


HEADER = ["row", "user", "probability"]
EARLIER_HEADERS = (HEADER, ["row", "probability"])  # the outputs --predict wrote, this version's and before


def _check_out(out: Path) -> None:
  """`out` may be written: it does not exist, or it is a previous --predict output (its first line is exactly
  a header --predict writes or wrote, `row,user,probability` or `row,probability`, and its second, if any, row
  0 with a probability in [0, 1]); anything else is someone else's file and is refused (DataError)."""
  if out.is_dir():
    raise DataError(f"--out {out} is a folder; give the path of the CSV file to write")
  if out.exists():
    try:
      with out.open("rb") as f:
        head = [f.readline(4096) for _ in range(2)]
    except OSError as e:
      raise DataError(f"--out {out} cannot be read ({e.strerror}); give another path") from None
    if not _is_output(head):
      raise DataError(
        f"--out {out} exists and is not a --predict output (its first lines are not the "
        f"`row,user,probability` header and row 0), so it is not overwritten; give another path or move "
        f"that file"
      )


def _is_output(head: list[bytes]) -> bool:
  try:
    lines = [line.decode("utf-8") for line in head if line]
    rows = list(csv.reader(lines))
  except (UnicodeDecodeError, csv.Error):
    return False
  if not rows or rows[0] not in EARLIER_HEADERS:
    return False
  if len(rows) == 1:
    return True
  try:
    return len(rows[1]) == len(rows[0]) and rows[1][0] == "0" and 0.0 <= float(rows[1][-1]) <= 1.0
  except ValueError:
    return False


def user_names(src: pipeline.Source, groups: np.ndarray, trained: Path | None = None) -> list[str]:
  """The `user` column: each group index as its raw user key where `src`'s vocabularies (those of the data
  set `trained` when `src` has none: records it encoded) decode it, else as the index (module docstring)."""
  folder = src.directory / "vocab"
  folder = folder if folder.is_dir() or trained is None else Path(trained) / "vocab"
  name = vocab_of(src.schema, src.schema.user_key, [p.stem for p in folder.glob("*.json")])
  values = json.loads((folder / f"{name}.json").read_text()) if name else []
  values = values if isinstance(values, list) else []
  unseen = src.directory / tabular.GROUPS_FILE
  if values and src.group_key != src.schema.user_key and unseen.exists():
    values += json.loads(unseen.read_text())
  return [str(values[g - 1]) if 0 < g <= len(values) else str(g) for g in np.asarray(groups).tolist()]


def predict(config: Config, workdir: str | Path, path: str | Path, out: str | Path) -> int:
  """Scores every record of `path` with the best checkpoint; writes `out` (CSV); returns the count."""
  _check_out(Path(out))
  run, params, _ = Run.restore(config, workdir)
  src, mesh = run.src, run.mesh
  records = open_records(_as_data_set(config, src, Path(path)), src.schema)
  rows = partition.per_process_batch(config.train.eval_batch_size, mesh, "train.eval_batch_size")
  count, batches = pipeline.eval_batches(
    records, "test", rows_per_process=rows, max_len=config.data.max_len, oov=config.data.oov
  )
  probs, groups = [], []
  for local in progress.counted(batches, "batch", "predict", total=count, every=max(1, count // 10)):
    p = np.asarray(jax.device_get(run.eval_step(params, partition.to_global(local, mesh))))
    probs.append(p[local["weight"] > 0])
    groups.append(local[records.group_key][local["weight"] > 0])
  scores = np.concatenate(probs) if probs else np.zeros(0, np.float32)
  users = user_names(records, np.concatenate(groups) if groups else np.zeros(0, np.int64), src.directory)
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)

  def write(f):
    w = csv.writer(f)
    w.writerow(HEADER)
    w.writerows((i, u, f"{p:.6f}") for i, (u, p) in enumerate(zip(users, scores)))

  files.write_with(out, write, interrupts.commit, newline="")  # a signal from the rename on leaves `out` complete
  mapped = batches.counts.as_dict()
  if mapped:
    print("read as OOV id 0 / 0.0 (data.oov=map): " + ", ".join(f"{n:,} {k}" for k, n in sorted(mapped.items())))
  return len(scores)
