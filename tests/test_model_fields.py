"""Every registered model declares the ModelConfig fields it reads (models.fields), and a run's identity
(what a resumed checkpoint must match, train/workdir.py) compares only those and the model's name.

(a) For every model, on a tiny hand-made schema and a fixed batch: changing the fields it does NOT declare
    changes neither the initialised state (tables, dense parameters, running statistics: shapes and
    values) nor the outputs, in evaluation and in training (fixed dropout / negatives rng; the logit and
    every extra: attention weights, DIEN's aux_loss, Dice's updated moments). A field the model reads but
    does not declare fails, named.
(b) What the trainer reads from config.model for a model is declared: aux_loss_weight for a model whose
    training extras hold an aux_loss (embed_dim, read by the state's init, is covered by (a)).
(c) The identity holds name + the declared fields only; differences() ignores the others, reports the
    declared ones, and still accepts an old checkpoint's identity that recorded every model.* field.

Speed (the budget is ~20 s for this file): nothing is compiled or run while the declarations hold. The
whole computation (state init, evaluation pass, training pass) is traced to a jaxpr, and a program equal
to the base configuration's, constants included, computes the same state and outputs. Every undeclared
field is changed at once, in one trace per round (round i takes each field's i-th other value); when a
round's program differs, each field is tried alone, and a field whose program differs is run for real
(jit) and fails if the state or the outputs differ.
"""

import dataclasses
import functools
import json
import types
import typing

import jax
import numpy as np
import pytest

from mian_jax import models
from mian_jax.config import Config, ModelConfig
from mian_jax.schema import Feature, FeatureSchema
from mian_jax.train import state as state_lib, step as step_lib, workdir

T = 5
HIST_LEN = (3, 5, 1, 0)  # a partial, a full, a single and an empty history
# Small widths, with every optional path of MIAN on (the encoder, target attention, GIM), so that a field
# read only on such a path is read here. Literal / bool fields keep their defaults.
BASE = dict(embed_dim=4, mlp=(8,), gim_dim=8, cross_layers=2, cin_layers=(4, 4), attention_mlp=(8, 4))
# Other valid values for every int / float / tuple field (a Literal or bool field takes each of its
# other values). A new field of such a type must be added here (test_every_field_has_other_values).
OTHER = {
  "embed_dim": (2,),
  "ibim_layers": (2,),
  "ibim_heads": (4,),
  "ibim_ffn_mult": (3,),
  "gim_dim": (6,),
  "mlp": ((6, 3),),
  "dropout": (0.5,),
  "cross_layers": (1,),
  "cin_layers": ((3,),),
  "attention_mlp": ((5,),),
  "gru_dim": (6,),
  "aux_loss_weight": (0.5,),
}
# How a model is computed, not what: the same outputs every way (each has its own equality test, e.g.
# test_layer_rewrites.test_attention_kernels_agree), so no model declares it and a resume may change it.
EXECUTION = ("ibim_attention_kernel",)
FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("name", *EXECUTION))
TRAINER_ONLY = ("aux_loss_weight",)  # read by step.py for the model's aux_loss, not by the model


def _base(**change) -> ModelConfig:
  return ModelConfig(**{**BASE, **change})


def _variants(field: str) -> tuple:
  hint = typing.get_type_hints(ModelConfig)[field]
  base = getattr(_base(), field)
  if typing.get_origin(hint) is typing.Literal:
    return tuple(v for v in typing.get_args(hint) if v != base)
  if hint is bool:
    return (not base,)
  return OTHER.get(field, ())


def _tiny() -> tuple[FeatureSchema, dict[str, np.ndarray]]:
  """A schema with every kind of field (two item fields, a side behaviour field, numeric user and
  context fields) and a fixed batch of 4 rows for it."""
  schema = FeatureSchema(
    (
      Feature("item_id", "item", "categorical", 11, table="item"),
      Feature("cate_id", "item", "categorical", 5, table="cate"),
      Feature("hist_item", "behaviour", "sequence", 11, table="item"),
      Feature("hist_cate", "behaviour", "sequence", 5, table="cate"),
      Feature("hist_age", "behaviour", "sequence", 4),  # a side behaviour field
      Feature("user_id", "user", "categorical", 9, embed=False),
      Feature("gender", "user", "categorical", 3),
      Feature("user_age", "user", "numeric"),
      Feature("hour", "context", "categorical", 4),
      Feature("price", "context", "numeric"),
    ),
    user_key="user_id",
    max_len=T,
  )
  rng = np.random.default_rng(0)
  rows = len(HIST_LEN)
  batch = {
    "label": np.array([1, 0, 1, 0], np.float32),
    "weight": np.ones(rows, np.float32),
    "hist_len": np.array(HIST_LEN, np.int32),
  }
  for f in schema.features:
    if f.kind == "numeric":
      batch[f.name] = rng.normal(size=rows).astype(np.float32)
    else:
      batch[f.name] = rng.integers(1, f.vocab_size, (rows, T) if f.kind == "sequence" else rows).astype(np.int32)
  return schema, batch


SCHEMA, BATCH = _tiny()
KEYS = (jax.random.key_data(jax.random.key(0)), jax.random.key_data(jax.random.key(1)))


def _computation(name: str, cfg: ModelConfig):
  """(init key, rng key, batch) -> (initialised params, evaluation (logit, extras), training (logit, extras)),
  as the trainer builds and runs model `name` under `cfg` (state.make_init, step.forward)."""
  model = models.get(name, cfg)
  tx = types.SimpleNamespace(init=lambda params: ())  # no optimizer state: it mirrors the params

  def run(init_key, rng, batch):
    params = state_lib.make_init(model, SCHEMA, cfg.embed_dim, tx)(init_key).params
    return (
      params,
      step_lib.forward(model, SCHEMA, params, batch, False),
      step_lib.forward(model, SCHEMA, params, batch, True, rng),
    )

  return run


class Program(typing.NamedTuple):
  text: str  # the jaxpr: operations, shapes, dtypes, literal values
  consts: list[np.ndarray]  # its constants
  out: typing.Any  # the shapes of what it returns (None when it could not be traced)


def _program(name: str, cfg: ModelConfig) -> Program:
  """The traced computation. Equal programs (text and constants) compute equal results."""
  try:
    closed, out = jax.make_jaxpr(_computation(name, cfg), return_shape=True)(*KEYS, BATCH)
  except Exception as e:  # e.g. a width the model cannot use: a change all the same
    return Program(f"error: {type(e).__name__}: {e}", [], None)
  return Program(str(closed.jaxpr), [np.asarray(c) for c in closed.consts], out)


@functools.cache
def _base_program(name: str) -> Program:
  return _program(name, _base())


def _same(a: Program, b: Program) -> bool:
  return (
    a.text == b.text
    and len(a.consts) == len(b.consts)
    and all(
      x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
      for x, y in zip(a.consts, b.consts)
    )
  )


def _outcome(name: str, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """The computation run (jit): every leaf of the params and of the evaluation / training outputs, by path."""
  params, evaluated, trained = jax.jit(_computation(name, cfg))(*KEYS, BATCH)
  tree = {
    "params": params,
    "eval": dict(zip(("logit", "extras"), evaluated)),
    "train": dict(zip(("logit", "extras"), trained)),
  }
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@functools.cache
def _base_outcome(name: str) -> dict[str, np.ndarray]:
  return _outcome(name, _base())


def _changed(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
  if a.keys() != b.keys():
    return [f"entries {sorted(a.keys() ^ b.keys())}"]
  return [
    k
    for k in a
    if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k], equal_nan=True)
  ]


def test_every_field_has_other_values():
  assert set(OTHER) <= set(FIELDS), f"OTHER names fields ModelConfig lacks: {sorted(set(OTHER) - set(FIELDS))}"
  missing = [f for f in FIELDS if not _variants(f)]
  assert not missing, f"no other value to try for model.{missing}: add them to OTHER"


@pytest.mark.parametrize("name", models.names())
def test_declarations_are_model_fields(name):
  declared = models.fields(name)
  assert len(set(declared)) == len(declared), f"{name}: a field declared twice: {declared}"
  assert set(declared) <= set(FIELDS), f"{name}: {sorted(set(declared) - set(FIELDS))} are not ModelConfig fields"


@pytest.mark.parametrize("name", models.names())
def test_undeclared_fields_change_nothing(name):
  undeclared = [f for f in FIELDS if f not in models.fields(name)]
  base = _base_program(name)
  assert base.out is not None, f"{name} cannot be traced on the base configuration: {base.text}"
  suspects = set()
  for i in range(max(len(_variants(f)) for f in undeclared)):
    change = {f: _variants(f)[i % len(_variants(f))] for f in undeclared}
    if not _same(base, _program(name, _base(**change))):
      suspects |= {(f, _variants(f)[i % len(_variants(f))]) for f in undeclared}
  read = []
  for field, value in sorted(suspects, key=str):
    if _same(base, _program(name, _base(**{field: value}))):
      continue
    try:
      changed = _changed(_base_outcome(name), _outcome(name, _base(**{field: value})))
    except Exception as e:
      changed = [f"{type(e).__name__}: {e}"]
    if changed:
      read.append(f"model.{field}={value} changes {', '.join(changed[:3])}")
  assert not read, f"{name} reads fields it does not declare in mian_jax/models/__init__.py: " + "; ".join(read)


def test_the_trainers_fields_are_declared():
  """step.py adds model.aux_loss_weight x extras['aux_loss'] to the loss: a model whose training extras hold
  one declares it (and only such a model); MIAN's hold one with model.ibim_aux_loss, on a GRU encoder."""
  for name in models.names():
    optional = "ibim_aux_loss" in models.fields(name)
    program = _program(name, _base(ibim_aux_loss=True, ibim_encoder="gru")) if optional else _base_program(name)
    _, _, (_, train_extras) = program.out
    has_aux = "aux_loss" in train_extras
    assert has_aux == ("aux_loss_weight" in models.fields(name)), (name, has_aux, models.fields(name))


def test_declared_fields_change_the_computation():
  """The reverse, loosely: every declared field changes the program of a model declaring it (the one with
  the fewest declared fields: the cheapest trace), so that no declaration is stale."""
  stale = []
  for field in FIELDS:
    owners = sorted((n for n in models.names() if field in models.fields(n)), key=lambda n: len(models.fields(n)))
    if field in TRAINER_ONLY or not owners:
      continue
    if _same(_base_program(owners[0]), _program(owners[0], _base(**{field: _variants(field)[0]}))):
      stale.append(f"{field} ({owners[0]})")
  assert not stale, f"declared but changing nothing: {stale}"


# ---------------------------------------------------------------- identity


def _config(**model) -> Config:
  config = Config()
  config.model = dataclasses.replace(config.model, **model)
  return config


def _here(**model) -> dict:
  return workdir.identity(_config(**model), "tiny-0123456789", "abc123")


def _saved(**model) -> dict:
  """The identity as a checkpoint stores it (JSON: tuples come back as lists)."""
  return json.loads(json.dumps(_here(**model)))


@pytest.mark.parametrize("name", models.names())
def test_identity_holds_name_and_declared_fields_only(name):
  assert set(_here(name=name)["model"]) == {"name", *models.fields(name)}
  saved = _saved(name=name)
  for field in FIELDS:
    for value in _variants(field):
      diff = workdir.differences(saved, _here(name=name, **{field: value}))
      if field in models.fields(name):
        assert len(diff) == 1 and diff[0].startswith(f"model.{field}: checkpoint "), (field, value, diff)
      else:
        assert diff == [], (field, value, diff)


def test_mian_identity_ignores_cin_layers():
  saved = _saved(name="mian")
  assert "cin_layers" not in saved["model"]
  assert workdir.differences(saved, _here(name="mian", cin_layers=(7, 7, 7))) == []


def test_mian_identity_differs_on_ibim_heads():
  assert workdir.differences(_saved(name="mian", ibim_heads=2), _here(name="mian", ibim_heads=3)) == [
    "model.ibim_heads: checkpoint 2, this run 3"
  ]


def test_an_old_identity_with_every_field_still_matches():
  """Checkpoints written before the declarations recorded every model.* field."""
  old = _saved(name="mian")
  old["model"] = json.loads(json.dumps(dataclasses.asdict(ModelConfig(name="mian"))))
  assert old["model"]["cin_layers"] == [100, 100] and "gru_dim" in old["model"]
  assert workdir.differences(old, _here(name="mian")) == []
  assert workdir.differences(old, _here(name="mian", cin_layers=(8,), gru_dim=5, cross_layers=1)) == []  # not MIAN's
  assert workdir.differences(old, _here(name="mian", ibim_heads=3)) == ["model.ibim_heads: checkpoint 2, this run 3"]
  assert workdir.differences(old, _here(name="mian", mlp=(64,))) == ["model.mlp: checkpoint [200, 80], this run (64,)"]
  # Another model's old checkpoint is still refused, by its name.
  assert workdir.differences(old, _here(name="dien")) == ["model.name: checkpoint mian, this run dien"]


def test_an_old_identity_naming_the_cache_folder_still_matches():
  """Checkpoints written before content ids recorded the cache folder (whose name hashes the input files'
  mtimes) under "data set": that key is no longer compared; a content id that differs is."""
  old = _saved(name="mian")
  old["data set"] = old.pop("data").replace("0123456789", "9f39a8b2d2")
  assert workdir.differences(old, _here(name="mian")) == []
  assert workdir.differences(
    _saved(name="mian"), workdir.identity(_config(name="mian"), "tiny-abcdefabcd", "abc123")
  ) == ["data: checkpoint tiny-0123456789, this run tiny-abcdefabcd"]


def test_a_generated_data_sets_scale_is_named_first_and_old_checkpoints_without_it_still_match():
  """The commercial CPU default moved from data.scale 0.01 to 0.03: a checkpoint of the other scale is
  refused naming data.scale before the content id; one recorded before the scale was (no key) matches."""
  saved = workdir.identity(_config(name="mian"), "commercial-aaaaaaaaaa", "abc123", 0.01)
  now = workdir.identity(_config(name="mian"), "commercial-bbbbbbbbbb", "abc123", 0.03)
  assert workdir.differences(saved, now) == [
    "data.scale: checkpoint 0.01, this run 0.03",
    "data: checkpoint commercial-aaaaaaaaaa, this run commercial-bbbbbbbbbb",
  ]
  same = workdir.identity(_config(name="mian"), "commercial-aaaaaaaaaa", "abc123", 0.03)
  assert workdir.differences(workdir.identity(_config(name="mian"), "commercial-aaaaaaaaaa", "abc123"), same) == []
  assert "data.scale" not in workdir.identity(_config(name="mian"), "tiny-0123456789", "abc123")  # not generated
