"""The rule that chooses MIAN's default (mian_jax/selection.py), on results.csv files written here."""

import csv

import pytest

from mian_jax import selection


def _csv(path, rows):
  keys = sorted({k for r in rows for k in r})
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
  return path


def _rows(overrides, aucs, name=None):
  out = []
  for seed, auc in enumerate(aucs):
    r = {"trial": f"t{seed}", "train.seed": seed, "status": "ok", "valid_auc": auc, "auc": auc - 0.01, **overrides}
    if name:
      r["model.name"] = name
    out.append(r)
  return out


def test_the_mean_difference_to_the_previous_default_decides(tmp_path, capsys):
  product = {"model.candidate_product": "history"}
  a = _csv(
    tmp_path / "a.csv",
    _rows({}, [0.80, 0.80, 0.80], "mian") + _rows(product, [0.83, 0.83, 0.83]) + _rows({}, [0.9, 0.9, 0.9], "din"),
  )  # another model: not a MIAN configuration
  b = _csv(tmp_path / "b.csv", _rows({}, [0.70, 0.70, 0.70]) + _rows(product, [0.69, 0.69, 0.69]))
  # Under the current defaults, no override is the current default; the previous one is spelled out.
  previous = {"model.ibim_encoder": "pre_ln", "model.ibim_aux_loss": "false", "model.candidate_product": "none"}
  c = _csv(
    tmp_path / "c.csv",
    _rows({}, [0.60, 0.61, 0.62], "mian")
    + _rows(previous, [0.61, 0.61, 0.61], "mian")
    + _rows({"model.ibim_encoder": "pre_ln", "model.ibim_aux_loss": "false"}, [0.62, 0.62]),
  )  # 2 seeds
  out = tmp_path / "out"
  code = selection.main(
    ["--out", str(out), f"one={a}:previous", f"two={b}:previous", f"three={c}:current", f"two={b}:previous"]
  )  # the same trials twice count once
  assert code == 0
  text = (out / "results.md").read_text()
  # history product, previous encoder: +0.03 on one, -0.01 on two, +0.01 (2 seeds) on three: not complete.
  row = next(l for l in text.splitlines() if l.startswith("| candidate_product=history, ibim_aux_loss=false"))
  assert "0.6200 ± 0.0000 (n=2)" in row and "| - |" in row and "chosen" not in row
  assert "| current default" not in text  # measured on one data set only: in results.csv, not in the table
  assert "previous default | 0.8000 ± 0.0000 | 0.7000 ± 0.0000 | 0.6100 ± 0.0000 | +0.0000 | 1.00 | **chosen**" in text
  table, data_sets = selection.choose(selection.trials("one", a, "previous") + selection.trials("two", b, "previous"))
  by = {r["configuration"]: r for r in table}
  assert data_sets == ["one", "two"] and set(by) == {
    "previous default",
    "candidate_product=history, ibim_aux_loss=false, ibim_encoder=pre_ln",
  }
  chosen = by["candidate_product=history, ibim_aux_loss=false, ibim_encoder=pre_ln"]
  assert chosen["score"] == pytest.approx((0.03 - 0.01) / 2) and chosen.get("chosen")
  assert by["previous default"]["score"] == 0 and not by["previous default"].get("chosen")
  with open(out / "results.csv") as f:
    assert len(list(csv.DictReader(f))) == 6 + 6 + 8  # MIAN trials only, the repeated source once


def test_a_bad_source_is_one_error_line(tmp_path, capsys):
  assert selection.main(["--out", str(tmp_path), "yelp=missing.csv:previous"]) == 2
  assert capsys.readouterr().err.startswith("error: missing.csv: no such results.csv")
  assert selection.main(["--out", str(tmp_path), "yelp=x.csv"]) == 2
  assert "expected DATA_SET=results.csv:BASE" in capsys.readouterr().err
