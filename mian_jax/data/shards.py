"""Sharded ArrayRecord data sets on disk: written in parallel and atomically, cached by their parameters,
sealed with each shard file's SHA-256 and a digest of meta.json itself (`seal`, checked by `verify` and
`load_meta`).

A data set lives in `<data.dir>/<name>-<hash of its parameters>/`:
    meta.json                      written last; its presence means the data set is complete
    train-00000-of-00004.array_record, test-00000-of-00004.array_record, ...
Every shard is written under a temporary name and renamed when complete, so a killed writer leaves
no file that looks finished; a rerun redoes only the shards that are missing. A write that fails (a full
disk, a file size limit, permissions) removes its temporary file and is a DataError naming the file;
finished shards and any other data set in data.dir stay as they were.
"""

from __future__ import annotations

import concurrent.futures as futures
import functools
import hashlib
import json
import multiprocessing
import contextlib
import os
import re
import signal
from pathlib import Path
from typing import Any, Callable, Sequence

from array_record.python import array_record_module

from mian_jax import files, progress
from mian_jax.errors import DataError
from mian_jax.schema import FeatureSchema

SPLITS = ("train", "valid", "test")  # valid is empty unless data.validation=holdout


def dataset_dir(root: str | os.PathLike, name: str, params: dict[str, Any]) -> Path:
  digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
  return Path(root) / f"{name}-{digest}"


def content_id(directory: Path, meta: dict[str, Any]) -> str:
  """The data set's name (its folder's, less the `dataset_dir` digest) and a digest of what it holds: the
  block sizes of every split and the converter's statistics (rows, label rates, vocabularies, ...). The
  folder's own digest covers the input files' paths and mtimes, so data converted again from the same
  files copied elsewhere or mounted anew gets a new folder with the same content id: what a checkpoint
  records as its data set (train/workdir.identity), so that such a run resumes and one on other data
  does not."""
  stem = re.sub(r"-[0-9a-f]{10}$", "", Path(directory).name)
  held = {k: meta.get(k) for k in ("blocks", "stats")}
  return f"{stem}-{hashlib.sha256(json.dumps(held, sort_keys=True, default=str).encode()).hexdigest()[:10]}"


def shard_path(directory: Path, split: str, index: int, count: int) -> Path:
  return directory / f"{split}-{index:05d}-of-{count:05d}.array_record"


@contextlib.contextmanager
def _atomic(path: Path):
  """Yields a temporary path next to `path`, renamed to `path` when the block succeeds; on any failure
  the temporary file is removed and the error becomes a one-line DataError naming `path`."""
  tmp = path.with_name(path.name + ".tmp")
  try:
    yield tmp
    os.replace(tmp, path)
  except DataError:
    raise
  except Exception as e:
    with contextlib.suppress(OSError):
      tmp.unlink()
    reason = getattr(e, "strerror", None) or str(e).split(";")[0].strip() or type(e).__name__
    raise DataError(
      f"cannot write {path}: {reason}; free space in {path.parent.parent} (or choose another "
      f"data.dir), then rerun: finished shards are kept"
    ) from None


# One record per chunk (random access to any block), stored uncompressed: reading 64 random blocks took
# 0.76 ms instead of 1.46 ms with the default zstd (2-core VM), and ArrayRecord's read holds the GIL, so
# that time caps every decoding thread together; the files are ~1.5x larger. Shards written before this
# (zstd) are read as they are.
WRITER_OPTIONS = "group_size:1,uncompressed"


def write_records(path: Path, records: Sequence[bytes]) -> None:
  """Writes records to `path` atomically (temporary file, then rename)."""
  with _atomic(path) as tmp:
    writer = array_record_module.ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
    for record in records:
      writer.write(record)
    writer.close()


def load_meta(directory: Path) -> dict[str, Any] | None:
  """The data set's meta.json (None when there is none yet); DataError when it is damaged or was edited
  after the data set was written (its own digest, `meta_sha256`, does not match)."""
  path = directory / "meta.json"
  if not path.exists():
    return None
  try:
    meta = files.read_json(path)
  except files.Damaged as e:
    raise DataError(
      f"{e}; it is written last when a data set is complete, so remove {directory} to rebuild the data set"
    ) from None
  if not isinstance(meta, dict):
    raise DataError(f"{path} holds no data set description; remove {directory} to rebuild the data set")
  if "meta_sha256" in meta and _meta_digest(meta) != meta["meta_sha256"]:
    raise DataError(
      f"{path} was changed after the data set was written (its digest does not match); remove "
      f"{directory} to rebuild the data set"
    )
  return meta


# Each shard file's SHA-256, written into meta.json with the data set (`seal`) and checked when a run opens it
# (`verify`): a changed or damaged file of any split is named before anything trains, and the digests are
# the data set's identity by content (`rows_digest`). meta.json carries a digest of itself too.
def file_digest(path: Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _meta_digest(meta: dict[str, Any]) -> str:
  held = {k: v for k, v in meta.items() if k != "meta_sha256"}
  return hashlib.sha256(json.dumps(held, sort_keys=True, default=str).encode()).hexdigest()


def seal(directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
  """`meta` with the digest of every shard file it lists and of itself, as meta.json will hold it."""
  meta = json.loads(json.dumps(meta))  # tuples become lists, as when read back
  names = [name for split in SPLITS for name in meta["files"].get(split, [])]
  with futures.ThreadPoolExecutor(min(8, len(names) or 1)) as pool:
    meta["digests"] = dict(zip(names, pool.map(lambda n: file_digest(directory / n), names)))
  meta["meta_sha256"] = _meta_digest(meta)
  return meta


def verify(directory: Path, meta: dict[str, Any]) -> None:
  """DataError naming the first shard file that is missing or whose content does not match its digest.
  Data sets written before digests were kept have none to check."""
  digests = meta.get("digests") or {}
  names = sorted(digests)
  missing = [n for n in names if not (directory / n).is_file()]
  if missing:
    raise DataError(f"{directory / missing[0]} is missing; remove {directory} to rebuild the data set")
  with futures.ThreadPoolExecutor(min(8, len(names) or 1)) as pool:
    found = list(pool.map(lambda n: file_digest(directory / n), names))
  for name, got in zip(names, found):
    if got != digests[name]:
      raise DataError(
        f"{directory / name}: its content does not match the digest written with the data set (the "
        f"file was changed or damaged); remove {directory} to rebuild the data set"
      )


def rows_digest(meta: dict[str, Any]) -> str | None:
  """A digest of every shard file's content (None for a data set written without digests)."""
  digests = meta.get("digests")
  if not digests:
    return None
  return hashlib.sha256(json.dumps(sorted(digests.values())).encode()).hexdigest()[:16]


def write_text(path: Path, text: str) -> None:
  """Writes `text` to `path` atomically (temporary file, then rename)."""
  with _atomic(path) as tmp:
    tmp.write_text(text)


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], desc: str, unit: str = "part") -> list[Any]:
  """[fn(x) for x in items] in worker processes, with a progress bar (in a log file: a line per finished
  item). Spawned, not forked: the parent may already hold JAX's threads; `fn` must be picklable (a
  module-level function or a partial of one)."""
  out: list[Any] = [None] * len(items)
  workers = min(len(items), os.cpu_count() or 1)
  with progress.Progress(len(items), unit, desc) as bar:
    if workers <= 1:
      for i, x in enumerate(items):
        out[i] = fn(x)
        bar.update()
      return out
    pool = futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint
    )
    try:
      jobs = {pool.submit(fn, x): i for i, x in enumerate(items)}
      for job in futures.as_completed(jobs):
        out[jobs[job]] = job.result()
        bar.update()
    except BaseException:  # an error, SIGTERM or Ctrl-C: stop the workers now (their unfinished shards are
      _stop(pool)  # temporary files, removed on the next start); finished shards stay
      raise
    pool.shutdown(wait=True)
  return out


def _ignore_sigint() -> None:
  """Workers leave Ctrl-C (sent to the whole terminal process group) to the parent, which stops them."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop(pool: futures.ProcessPoolExecutor) -> None:
  """Cancels the queued jobs and terminates the worker processes, waiting until they are gone."""
  processes = list((getattr(pool, "_processes", None) or {}).values())
  manager = getattr(pool, "_executor_manager_thread", None)
  pool.shutdown(wait=False, cancel_futures=True)
  for p in processes:
    with contextlib.suppress(Exception):
      p.terminate()
  for p in processes:
    with contextlib.suppress(Exception):
      p.join(timeout=10)
  # The pool's manager thread closes its wake-up pipe as it ends; ended before the interpreter's exit, it
  # cannot race concurrent.futures' exit hook writing to that pipe (an EBADF traceback after the error line).
  if manager is not None:
    manager.join(timeout=10)


def _run_shard(shard_fn: Callable[[int], dict[str, Any]], directory: Path, index: int) -> dict[str, Any]:
  """Runs one shard unless an earlier run finished it (its statistics file is written last)."""
  done = directory / f"shard-{index:05d}.stats.json"
  if done.exists():
    # Written atomically, so a damaged one is an outside edit or a disk fault: the shard is redone.
    with contextlib.suppress(files.Damaged):
      return files.read_json(done)
  stats = shard_fn(index)
  write_text(done, json.dumps(stats))
  return stats


def _remove_unfinished(directory: Path) -> None:
  """Removes the build's unfinished shards (`*.tmp`, written only by write_records in its own folder)."""
  for leftover in directory.glob("*.tmp"):
    leftover.unlink(missing_ok=True)


def build(
  directory: Path,
  schema: FeatureSchema,
  params: dict[str, Any],
  num_shards: int,
  shard_fn: Callable[[int], dict[str, Any]],
  finish: Callable[[list[dict]], dict[str, Any]],
  desc: str,
) -> dict[str, Any]:
  """Builds the data set unless a complete one with the same parameters exists; returns its meta.

  `shard_fn(i)` writes shard i of every split (use `shard_path`) and returns picklable statistics,
  including `blocks`: {split: [samples per block]}. It must be a module-level function (it runs in
  worker processes). `finish(stats)` turns the per-shard statistics into the `stats` entry of meta.
  """
  meta = load_meta(directory)
  if meta is not None and meta.get("params") == params:
    return meta
  if meta is not None:  # same hash, other parameters: never mix shards of two data sets
    had = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    key = next((k for k in sorted(set(had) | set(params)) if had.get(k) != params.get(k)), "params")
    raise DataError(
      f"{directory}/meta.json was written for other parameters ({key}: {had.get(key)!r} there, "
      f"{params.get(key)!r} here); remove {directory} to rebuild the data set"
    )
  directory.mkdir(parents=True, exist_ok=True)
  _remove_unfinished(directory)
  try:
    stats = parallel_map(functools.partial(_run_shard, shard_fn, directory), range(num_shards), desc, unit="shard")
  except BaseException:  # a failed shard, SIGTERM, Ctrl-C: the stopped workers' unfinished shards go too
    _remove_unfinished(directory)
    raise
  # A shard with no block of a split writes no file for it.
  files = {
    s: [shard_path(directory, s, i, num_shards).name for i in range(num_shards) if stats[i]["blocks"][s]]
    for s in SPLITS
  }
  blocks = {s: [n for st in stats for n in st["blocks"][s]] for s in SPLITS}
  meta = seal(
    directory, {"params": params, "schema": schema.to_dict(), "files": files, "blocks": blocks, "stats": finish(stats)}
  )
  write_text(directory / "stats.json", json.dumps(meta["stats"], indent=1))
  write_text(directory / "meta.json", json.dumps(meta, indent=1))
  return meta
