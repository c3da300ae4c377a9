"""Bad input: each case ends in one `error:` line naming the file / record / key and the fix, a non-zero
exit, and nothing in the workdir or the data folder lost. Shards: truncated, corrupt, a record that does
not match the schema, ids outside the vocabulary and non-finite numbers (data.oov); missing or empty
input folders; a full disk while writing shards or a checkpoint (a file-size limit on the process: the
write fails as on a full disk). Histories that are empty or longer than data.max_len:
test_model_edge_cases.py and test_records.py; bad CSV / JSON rows: the converters' tests."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import plant, xla_flags
from mian_jax.data import pipeline
from test_e2e import ROOT, _final_params, _launch, _run


def _source(directory: Path) -> pipeline.Source:
  import json

  from mian_jax.schema import FeatureSchema

  meta = json.loads((directory / "meta.json").read_text())
  return pipeline.Source(directory, FeatureSchema.from_dict(meta["schema"]), meta)


def _listing(root: Path) -> list[tuple[str, int]]:
  return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


def _eval_all(src, **kw):
  return list(_eval(src, **kw))


def _eval(src, **kw):
  _, batches = pipeline.eval_batches(src, "test", rows_per_process=512, max_len=10, **kw)
  return batches


def test_truncated_and_corrupt_shards_are_named(tmp_path, data_root, tiny_source):
  copy = tmp_path / "data" / tiny_source.directory.name
  shutil.copytree(tiny_source.directory, copy)
  shard = copy / tiny_source.meta["files"]["train"][1]
  shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
  with pytest.raises(pipeline.DataError, match=f"{shard}: cannot be opened .*truncated or corrupt: delete {copy}"):
    pipeline.train_iterator(_source(copy), batch_per_process=256, seed=0, max_len=10)
  before = _listing(tmp_path / "data")
  run = _run(tmp_path / "w", data_root, "--set", f"data.dir={tmp_path / 'data'}", "--set", "train.steps=2")
  assert run.returncode == 2
  assert run.stderr.strip().splitlines() == [run.stderr.strip().splitlines()[-1]]  # one line
  # A run opening the data set checks every shard file against the digest written with it.
  assert run.stderr.startswith(
    f"error: {shard}: its content does not match the digest written with the data "
    f"set (the file was changed or damaged); remove {copy} to rebuild the data set"
  )
  assert _listing(tmp_path / "data") == before  # nothing removed
  assert not list((tmp_path / "w").rglob("checkpoints/*"))  # nothing saved from a run that could not read its data
  # Bytes changed inside a shard (in its data, not the padding after it): ArrayRecord's chunk hash
  # catches them and the record is named.
  copy2 = tmp_path / "flipped" / tiny_source.directory.name
  shutil.copytree(tiny_source.directory, copy2)
  test_shard = copy2 / tiny_source.meta["files"]["test"][0]
  raw = bytearray(test_shard.read_bytes())
  raw[len(raw) // 20 : len(raw) // 20 + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
  test_shard.write_bytes(bytes(raw))
  with pytest.raises(pipeline.DataError, match=rf"{test_shard}(: cannot be opened| record \d+: ).*(corrupt|checksum)"):
    _eval_all(_source(copy2))
  # Through launch.py the damaged test shard is named before the first step, not at the first evaluation.
  run = _run(tmp_path / "w2", data_root, "--set", f"data.dir={tmp_path / 'flipped'}", "--set", "train.steps=2")
  assert run.returncode == 2 and run.stderr.startswith(f"error: {test_shard}: its content does not match"), run.stderr
  assert "step 1/" not in run.stdout and not list((tmp_path / "w2").rglob("checkpoints/*"))


def test_an_edited_meta_json_is_refused(tmp_path, data_root, tiny_source):
  """meta.json carries its own digest: an edited `blocks` entry (the run would count other samples) or other
  parameters under the same folder name are one error line each."""
  import json

  copy = tmp_path / "data" / tiny_source.directory.name
  shutil.copytree(tiny_source.directory, copy)
  meta = json.loads((copy / "meta.json").read_text())
  meta["blocks"]["train"][0] -= 1
  (copy / "meta.json").write_text(json.dumps(meta, indent=1))
  run = _run(tmp_path / "w", data_root, "--set", f"data.dir={tmp_path / 'data'}", "--set", "train.steps=2")
  assert run.returncode == 2, run.stderr
  assert run.stderr == (
    f"error: {copy / 'meta.json'} was changed after the data set was written (its digest does "
    f"not match); remove {copy} to rebuild the data set\n"
  )
  meta["blocks"]["train"][0] += 1
  meta["params"]["seed"] = 7  # other parameters, resealed: the folder's name says they are the run's
  del meta["meta_sha256"]
  from mian_jax.data import shards

  (copy / "meta.json").write_text(json.dumps({**meta, "meta_sha256": shards._meta_digest(meta)}, indent=1))
  import experiments
  from mian_jax import data

  config = experiments.get_config("commercial:tiny")
  config.data.dir = str(tmp_path / "data")
  with pytest.raises(
    pipeline.DataError,
    match=rf"^{copy}/meta.json was written for other parameters \(seed: 7 there, "
    rf"0 here\); remove {copy} to rebuild the data set$",
  ):
    data.open_source(config.data)


def test_a_resume_on_other_rows_with_the_same_statistics_is_refused(tmp_path, data_root, tiny_source):
  """Two labels swapped between rows leave every statistic as it was; the shards' digests differ."""

  def swap(block):
    ones, zeros = np.flatnonzero(block["label"] == 1), np.flatnonzero(block["label"] == 0)
    block["label"][ones[0]], block["label"][zeros[0]] = 0, 1

  path = plant(tiny_source.directory, tmp_path / "data", "train", 0, swap)
  sets = ("--set", "train.steps=2", "--set", "train.checkpoint_every=2")
  first = _run(tmp_path / "w", data_root, *sets)  # trained on the session's data set
  assert first.returncode == 0, first.stderr
  other = _run(tmp_path / "w", data_root, "--set", f"data.dir={tmp_path / 'data'}", *sets[:1], "train.steps=4")
  assert other.returncode == 2 and "holds checkpoints of another run (data rows: checkpoint " in other.stderr, (
    other.stderr
  )
  assert path.parent.name == tiny_source.directory.name  # same folder name and statistics: only the rows differ


def test_a_record_that_does_not_match_the_schema_is_named(tmp_path, tiny_source):
  short = plant(tiny_source.directory, tmp_path / "a", "test", 2, lambda block: b"MJB1" + bytes(24))
  with pytest.raises(
    pipeline.DataError,
    match=rf"{short} record 2: record holds \d+ bytes but the schema needs \d+ .*"
    r"does not match this data set's schema",
  ):
    _eval_all(_source(short.parent))
  foreign = plant(tiny_source.directory, tmp_path / "b", "test", 1, lambda block: b"PK\x03\x04 not a block")
  with pytest.raises(pipeline.DataError, match=rf"{foreign} record 1: record does not start with"):
    _eval_all(_source(foreign.parent))


def _dirty(block):
  block["item_id"][0] = 200  # the vocabulary holds ids 0..41
  block["activity"][1] = np.nan


def test_ids_outside_the_vocabulary_and_non_finite_values_follow_data_oov(tmp_path, data_root, tiny_source):
  path = plant(tiny_source.directory, tmp_path / "data", "test", 0, _dirty)
  src = _source(path.parent)
  with pytest.raises(
    pipeline.DataError,
    match=rf"{path} record 0: feature item_id holds id 200 outside its "
    r"vocabulary 0..41; .*set data.oov=map",
  ):
    _eval_all(src, oov="error")
  it = _eval(src, oov="map")
  batches = list(it)
  assert it.counts.as_dict() == {"ids outside their vocabulary": 1, "non-finite numeric values": 1}
  assert all(set(b) == set(batches[0]) and not any(k.startswith("_") for k in b) for b in batches)  # data only
  assert all(b["item_id"].max() < 42 and np.isfinite(b["activity"]).all() for b in batches)
  nan_only = plant(tiny_source.directory, tmp_path / "nan", "test", 0, lambda b: b["activity"].__setitem__(3, np.inf))
  with pytest.raises(
    pipeline.DataError, match=rf"{nan_only} record 0: feature activity holds the non-finite value inf"
  ):
    _eval_all(_source(nan_only.parent), oov="error")
  sets = ("--set", f"data.dir={tmp_path / 'data'}", "--set", "train.steps=2")
  refused = _run(tmp_path / "w", data_root, *sets, "--set", "data.oov=error")
  assert refused.returncode == 2 and refused.stderr.startswith(f"error: {path} record 0: feature item_id holds id 200")
  mapped = _run(tmp_path / "w", data_root, *sets)
  assert mapped.returncode == 0, mapped.stderr
  assert (
    "read as OOV id 0 / 0.0 in the test data (data.oov=map): 1 ids outside their vocabulary, "
    "1 non-finite numeric values"
  ) in mapped.stdout


@pytest.mark.parametrize("workers", [0, 1])
def test_training_batches_count_values_read_as_zero(tmp_path, tiny_source, workers):
  """The counts travel with each batch (from grain's worker processes too) and only into `counts`."""
  src = _source(plant(tiny_source.directory, tmp_path / "data", "train", 0, _dirty).parent)
  block = src.block_size()
  it = pipeline.train_iterator(src, batch_per_process=block, seed=0, max_len=10, workers=workers)
  batches = [next(it) for _ in src.blocks("train")]  # one epoch: every block once
  assert it.counts.as_dict() == {"ids outside their vocabulary": 1, "non-finite numeric values": 1}
  assert all(set(b) == set(batches[0]) and not any(k.startswith("_") for k in b) for b in batches)
  assert max(int(b["item_id"].max()) for b in batches) < 42


@pytest.mark.parametrize(
  "experiment, folder, needle",
  [
    ("movielens:tiny", "missing", "no MovieLens files found"),
    ("books:tiny", "empty", "no Amazon files found"),
    ("custom:tiny", "empty", "no file matches"),
  ],
)
def test_missing_or_empty_input_folders(tmp_path, experiment, folder, needle):
  data = tmp_path / folder
  if folder == "empty":
    data.mkdir()
  cmd = [
    sys.executable,
    str(ROOT / "launch.py"),
    "--experiment",
    experiment,
    "--workdir",
    str(tmp_path / "w"),
    "--set",
    f"data.dir={data}",
  ]
  run = subprocess.run(
    cmd,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "MIAN_JAX_CACHE": str(tmp_path / "c")},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 2
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], run.stderr
  assert str(data) in lines[0] or folder == "empty"


def _limited(cmd, limit_bytes: int):
  """Runs `cmd` with a file-size limit: a write past it fails with EFBIG, as a full disk fails with ENOSPC."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # no cache writes under the limit
  env.update(XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu")
  # The limit is set by a small Python wrapper that then execs the command (a preexec_fn would fork this
  # multithreaded process).
  wrapper = (
    "import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
  )
  return subprocess.run(
    [sys.executable, "-c", wrapper, str(limit_bytes), *cmd],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_a_full_disk_while_writing_shards_or_a_checkpoint_keeps_what_was_written(tmp_path, data_root, tiny_source):
  data = tmp_path / "data"
  shutil.copytree(tiny_source.directory, data / tiny_source.directory.name)  # a data set written before
  before = _listing(data)
  cmd = [
    sys.executable,
    str(ROOT / "launch.py"),
    "--experiment",
    "commercial:tiny",
    "--workdir",
    str(tmp_path / "w"),
    "--set",
    f"data.dir={data}",
    "--set",
    "data.seed=1",
    "--set",
    "train.steps=4",
    "--set",
    "train.compilation_cache=",
  ]  # no compilation cache writes under the limit
  run = _limited(cmd, 50_000)
  assert run.returncode == 2
  error = run.stderr.strip().splitlines()[-1]
  assert error.startswith(f"error: cannot write {data}/commercial-") and "File too large" in error
  assert "free space" in error and "finished shards are kept" in error
  assert [x for x in _listing(data) if x[0].startswith(tiny_source.directory.name)] == before
  assert not list(data.rglob("*.tmp")) and not list(data.glob("*/meta.json"))[1:]
  # A checkpoint: step 4 is written, then step 8 cannot be; 4 stays restorable and the rerun resumes. The
  # model is LR: what is written is the same pytree whatever the model, and its programs compile in a fraction
  # of MIAN's time (the limited process compiles without the cache).
  w = tmp_path / "ckpt"
  first = _launch(w, data_root, "--model", "lr", "--set", "train.steps=4")
  assert first.returncode == 0, first.stderr
  cmd = [
    sys.executable,
    str(ROOT / "launch.py"),
    "--experiment",
    "commercial:tiny",
    "--workdir",
    str(w),
    "--model",
    "lr",
    "--set",
    f"data.dir={data_root}",
    "--set",
    "train.steps=8",
    "--set",
    "train.compilation_cache=",
  ]
  full = _limited(cmd, 20_000)
  assert full.returncode == 2, full.stderr[-2000:]
  lines = full.stderr.strip().splitlines()
  assert len(lines) == 1, full.stderr[-3000:]
  assert lines[0].startswith(f"error: could not write checkpoint step 8 in {w / 'checkpoints'} (File too large)")
  assert "the last checkpoint (step 4) is kept" in lines[0]
  assert _final_params(w)[0] == 4
  again = _launch(w, data_root, "--model", "lr", "--set", "train.steps=8")
  assert again.returncode == 0 and "resumed from step 4" in again.stdout, again.stderr
  assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["4", "8"]
