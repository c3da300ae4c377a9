"""Export and serving: a tiny MIAN run exported with a symbolic batch size scores exactly as the
in-process model for two batch sizes; raw values go through vocabularies (OOV, padding, truncation,
newest-first histories, numeric standardisation) to the same ids; the loader needs no Flax or model code."""

import dataclasses
import json
import math
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.test_e2e import ROOT, _run

TIGHT = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
  """(config, workdir, export dir) of a tiny MIAN run (1 epoch, 24 steps: the run test_e2e makes first, so
  that in the suite its programs come from the shared compilation cache), exported."""
  import experiments
  from mian_jax import export

  root = tmp_path_factory.mktemp("export")
  trained = _run(root / "w", data_root)
  assert trained.returncode == 0, trained.stderr
  config = experiments.get_config("commercial:tiny")
  config.data.dir = str(data_root)
  return config, root / "w", export.export(config, root / "w", root / "model")


@pytest.fixture(scope="module")
def reference(run):
  """(model, source, host params, jitted eval step on one device, 20 test rows)."""
  from mian_jax.data import pipeline
  from mian_jax.train import step as step_lib
  from mian_jax.train.run import Run

  config, workdir, _ = run
  restored, params, _ = Run.restore(config, workdir)
  model, src = restored.model, restored.src
  params = jax.device_get(params)
  _, batches = pipeline.eval_batches(src, "test", rows_per_process=20, max_len=config.data.max_len)
  rows = next(iter(batches))
  assert rows["weight"].min() == 1  # all real rows
  return model, src, params, jax.jit(step_lib.make_eval_step(model, src.schema)), rows


def _take(rows, lo, hi):
  return {k: v[lo:hi] for k, v in rows.items()}


def _raw_ids(batch, src):
  """Records holding the ids themselves (no vocabularies), histories as lists of their real entries."""
  records = []
  for i in range(len(batch["label"])):
    n = int(batch["hist_len"][i])
    records.append(
      {
        f.name: batch[f.name][i, :n].tolist() if f.kind == "sequence" else batch[f.name][i].item()
        for f in src.schema.features
      }
    )
  return records


def test_exported_model_scores_as_the_model_for_two_batch_sizes(run, reference):
  from mian_jax import export, serving

  _, _, out = run
  _, src, _, eval_step, rows = reference
  manifest = json.loads((out / "manifest.json").read_text())
  assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.jaxexport", "params.npz"]  # no vocab/
  assert manifest["model"] == "mian" and manifest["schema"] == src.schema.to_dict()
  inputs = manifest["inputs"]
  assert list(inputs) == export.input_names(src.schema) and "user_id" not in inputs and "label" not in inputs
  assert inputs["hist_len"]["dtype"] == "int32" and inputs["hist_len"]["shape"] == []
  assert inputs["hist_item_id"] == {
    "group": "behaviour",
    "kind": "sequence",
    "dtype": "int32",
    "shape": [10],
    "vocab_size": 42,
    "vocab": None,
    "newest_first": False,
  }
  assert inputs["activity"]["dtype"] == "float32" and "mean" not in inputs["activity"]
  scorer = serving.Scorer.load(out)
  # The in-process probabilities of all 20 rows in one compile: MIAN scores every row on its own.
  probs = np.asarray(eval_step(reference[2], rows))
  for lo, hi in ((0, 3), (3, 20)):  # batch sizes 3 and 17, different rows
    batch, want = _take(rows, lo, hi), probs[lo:hi]
    got = scorer.score_ids(batch)
    assert got.shape == (hi - lo,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, **TIGHT)
    np.testing.assert_allclose(scorer.score(_raw_ids(batch, src)), want, **TIGHT)
  assert np.ptp(want) > 1e-4  # the rows score differently: the comparison can fail
  # Ids out of range are OOV (0), not NaN from a lookup past the table.
  bad = {**_take(rows, 0, 3), "item_id": np.array([0, 999, -5], np.int32)}
  np.testing.assert_array_equal(scorer.score_ids(bad), scorer.score_ids({**bad, "item_id": np.zeros(3, np.int32)}))
  with pytest.raises(KeyError, match="hist_len"):
    scorer.score_ids({k: v for k, v in _take(rows, 0, 3).items() if k != "hist_len"})


def test_raw_values_are_mapped_through_the_vocabularies(run, reference, tmp_path):
  """The same model exported from a source with vocabularies (item and category values as text),
  numeric standardisation and newest-first histories: raw records encode to exactly the ids."""
  from mian_jax import export, serving

  model, src, params, _, rows = reference
  t = src.schema.max_len
  data = tmp_path / "data"
  (data / "vocab").mkdir(parents=True)
  (data / "vocab" / "item.json").write_text(json.dumps([f"item-{i}" for i in range(1, 42)]))  # id i
  (data / "vocab" / "cate.json").write_text(json.dumps([f"c{i}" for i in range(1, 42)]))
  spec = [{"feature": f.name, "newest_first": True} for f in src.schema.group("behaviour")]
  meta = {
    **src.meta,
    "params": {"spec": {"columns": spec}},
    "stats": {**src.meta["stats"], "numeric_standardisation": {"activity": {"mean": 0.5, "std": 2.0}}},
  }
  out = tmp_path / "model"
  (out / "old").mkdir(parents=True)  # an earlier export (its manifest names the format): replaced whole
  (out / export.MANIFEST_FILE).write_text(json.dumps({"format": export.FORMAT}))
  export.write(model, dataclasses.replace(src, directory=data, meta=meta), params, out, "mian")
  assert not (out / "old").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model"]  # no temporary left
  assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.jaxexport", "params.npz", "vocab"]
  assert (out / "vocab" / "item.json").read_text() == (data / "vocab" / "item.json").read_text()
  inputs = json.loads((out / "manifest.json").read_text())["inputs"]
  links = {
    n: inputs[n]["vocab"] for n in ("item_id", "hist_item_id", "item_cate", "hist_item_cate", "hist_age_days", "city")
  }
  assert links == {
    "item_id": "vocab/item.json",
    "hist_item_id": "vocab/item.json",
    "item_cate": "vocab/cate.json",
    "hist_item_cate": "vocab/cate.json",
    "hist_age_days": None,
    "city": None,
  }
  assert inputs["activity"]["mean"] == 0.5 and inputs["hist_age_days"]["newest_first"] is True
  batch = _take(rows, 3, 20)
  full = np.flatnonzero(batch["hist_len"] == t)
  assert len(full) and (batch["hist_len"] < t).any()
  text = {"item": lambda i: f"item-{i}", "cate": lambda i: f"c{i}"}
  records = []
  for i in range(len(batch["label"])):
    n = int(batch["hist_len"][i])
    r = {}
    for f in src.schema.features:
      as_raw = text.get(f.table_name, int)
      if f.kind == "sequence":
        history = [as_raw(v) for v in batch[f.name][i, :n]]  # oldest first
        if i == full[0]:  # three older behaviours: cut, the most recent t kept
          history = [as_raw(1), as_raw(2), as_raw(3)] + history
        r[f.name] = history[::-1]  # newest first, as this source's files hold them
      elif f.kind == "numeric":
        r[f.name] = float(batch[f.name][i]) * 2.0 + 0.5
      else:
        r[f.name] = as_raw(int(batch[f.name][i]))
    records.append(r)
  want = {k: batch[k].copy() for k in inputs}
  records[0]["item_id"], want["item_id"][0] = "never-seen", 0  # OOV
  records[1]["item_cate"], want["item_cate"][1] = None, 0  # missing
  records[2]["city"], want["city"][2] = 10_000, 0  # an id past the vocabulary
  records[3]["city"], want["city"][3] = str(batch["city"][3]), batch["city"][3]  # ids as text
  j = int(np.flatnonzero(batch["hist_len"] > 0)[0])
  records[j]["hist_item_id"][0] = "never-seen"  # the most recent behaviour unknown
  want["hist_item_id"][j, batch["hist_len"][j] - 1] = 0
  scorer = serving.Scorer.load(out)
  got = scorer.encode(records)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert got[k].dtype == want[k].dtype, k
  np.testing.assert_allclose(scorer.score(records), serving.Scorer.load(run[2]).score_ids(want), **TIGHT)
  with pytest.raises(ValueError, match="different lengths"):
    scorer.encode([{**records[0], "hist_age_days": records[0]["hist_age_days"] + [1]}])
  with pytest.raises(KeyError, match="activity"):
    scorer.encode([{k: v for k, v in records[0].items() if k != "activity"}])
  # One rule on types with a vocabulary or without: a container or a bool is not a value, it is named.
  for bad in ({"a": 1}, ["item-1"], True):
    with pytest.raises(ValueError, match=r"^record 1: feature 'item_id': .* is not a value of the vocabulary"):
      scorer.score([records[0], {**records[1], "item_id": bad}])
    with pytest.raises(ValueError, match=r"^record 0: feature 'city': .* is not an integer id"):
      scorer.score([{**records[0], "city": bad}])
  with pytest.raises(TypeError, match=r"score takes a list of records \(dicts\); for one record, pass \[record\]"):
    scorer.score(records[0])
  # Scored in chunks: the same probabilities, and a bad record named by its place in the whole list.
  np.testing.assert_allclose(scorer.score(records, batch_size=4), scorer.score(records), **TIGHT)
  with pytest.raises(ValueError, match=r"^record 9: feature 'item_id'"):
    scorer.score(records[:9] + [{**records[9], "item_id": True}], batch_size=4)
  entry = {"log1p": True, "mean": 1.0, "std": 2.0}
  assert serving.Scorer._numeric(entry, math.e - 1) == 0.0 and serving.Scorer._numeric(entry, None) == 0.0
  assert serving.Scorer._numeric(entry, float("inf")) == 0.0


def test_vocabulary_found_through_a_shared_table():
  from mian_jax import export
  from mian_jax.data import movielens

  schema = movielens.make_schema(
    {k: {"a": 1} for k in ("item_id", "item_cate", "user_id", "gender", "occupation", "zip_prefix")}, max_len=5
  )
  files = ["item_id", "item_cate", "user_id", "gender", "occupation", "zip_prefix"]  # what movielens.py writes
  assert export.vocab_of(schema, "hist_item_id", files) == "item_id"
  assert export.vocab_of(schema, "hist_item_cate", files) == "item_cate"
  assert export.vocab_of(schema, "gender", files) == "gender"
  assert export.vocab_of(schema, "hist_age_days", files) is None and export.vocab_of(schema, "hour", files) is None


def test_serving_in_a_fresh_process_needs_no_flax_or_model_code(run, reference, tmp_path):
  _, _, out = run
  _, _, params, eval_step, rows = reference
  batch = _take(rows, 0, 3)  # a size compiled before: the shared compilation cache answers
  want = np.asarray(eval_step(params, rows))[:3]
  np.savez(tmp_path / "batch.npz", **batch)
  code = (
    "import sys, numpy as np\n"
    "from mian_jax import serving\n"
    f"batch = dict(np.load({str(tmp_path / 'batch.npz')!r}))\n"
    f"np.save({str(tmp_path / 'probs.npy')!r}, serving.Scorer.load({str(out)!r}).score_ids(batch))\n"
    "bad = [m for m in sys.modules if m.split('.')[0] in ('flax', 'optax', 'orbax') or\n"
    "       m.startswith(('mian_jax.models', 'mian_jax.train', 'mian_jax.layers', 'mian_jax.data'))]\n"
    "print('imported:', bad)\n"
    "sys.exit(1 if bad else 0)\n"
  )
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr
  np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), want, **TIGHT)


def test_the_scorer_has_one_rule_for_ids_and_names_the_record_and_feature(run, reference):
  """Non-integer ids are an error in score_ids and in score (not truncated, not OOV); every error names
  the record (row) and the feature; a history that is not a list or holds a missing entry is refused."""
  from mian_jax import serving

  _, src, _, _, rows = reference
  scorer = serving.Scorer.load(run[2])
  batch = _take(rows, 0, 3)
  integral = {**batch, "item_id": batch["item_id"].astype(np.float64)}
  np.testing.assert_array_equal(scorer.score_ids(integral), scorer.score_ids(batch))
  with pytest.raises(ValueError, match=r"input 'item_id' row 1: .* not an integer"):
    scorer.score_ids({**batch, "item_id": np.array([1.0, 1.5, 2.0])})
  record = {
    f.name: (batch[f.name][0, : batch["hist_len"][0]].tolist() if f.kind == "sequence" else batch[f.name][0].item())
    for f in src.schema.features
  }
  assert scorer.encode([record])["item_id"][0] == batch["item_id"][0]
  for key, value, error, words in (
    ("item_id", 1.5, ValueError, "record 1: feature 'item_id': 1.5 is not an integer id"),
    ("city", "abc", ValueError, "record 1: feature 'city': 'abc' is not an integer id"),
    ("activity", "abc", ValueError, "record 1: feature 'activity': 'abc' is not a number"),
    ("hist_item_id", 5, TypeError, "record 1: feature 'hist_item_id': 5 is not a list"),
    ("hist_item_id", [None, float("nan"), 3], ValueError, "record 1: feature 'hist_item_id': behaviour 0 is missing"),
  ):
    with pytest.raises(error) as e:
      scorer.encode([record, {**record, key: value}])
    assert words in str(e.value), str(e.value)


def test_a_changed_export_is_refused_naming_its_file(run, tmp_path):
  """The manifest lists every file's SHA-256 and its own: a flipped bit in the function, an edited vocabulary
  or `mean`, and paths that leave the export folder are refused before anything is deserialized."""
  import json
  import shutil

  from mian_jax.serving import Scorer

  _, _, exported = run
  manifest = json.loads((exported / "manifest.json").read_text())
  assert set(manifest["sha256"]) >= {"model.jaxexport", "params.npz"} and manifest["manifest_sha256"]

  def copy(name):
    target = tmp_path / name
    shutil.copytree(exported, target)
    return target

  flipped = copy("flipped")
  raw = bytearray((flipped / "model.jaxexport").read_bytes())
  raw[len(raw) // 2] ^= 1
  (flipped / "model.jaxexport").write_bytes(bytes(raw))
  with pytest.raises(ValueError, match=r"flipped/model.jaxexport does not match its checksum"):
    Scorer.load(flipped)
  for where, edit in (
    ("edited", lambda m: m["inputs"]["activity"].__setitem__("mean", 3.0)),
    ("outside", lambda m: m.__setitem__("params", "../flipped/params.npz")),
    ("absolute", lambda m: m.__setitem__("function", "/etc/hostname")),
  ):
    folder = copy(where)
    changed = json.loads((folder / "manifest.json").read_text())
    edit(changed)
    (folder / "manifest.json").write_text(json.dumps(changed))
    message = {
      "edited": "manifest.json was changed after the export was written",
      "outside": r"names '../flipped/params.npz', outside the export folder",
      "absolute": r"names '/etc/hostname', not a file of the export",
    }[where]
    with pytest.raises(ValueError, match=message):
      Scorer.load(folder)
  Scorer.load(copy("intact"))  # an unchanged copy loads
