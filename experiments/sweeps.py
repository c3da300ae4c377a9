"""Sweeps by name: each is a list of trials, a trial being the `--set` overrides it adds to the experiment.

  python launch.py --experiment EXP --sweep NAME [--set KEY=VALUE ...]

Every trial runs in `runs/<EXP>/sweeps/<NAME>/<trial id>/` (under `--workdir DIR` when given); the id
is made from the overrides (stable: the same trial always gets the same id).
"""

from __future__ import annotations

from mian_jax.models import ABLATIONS, BASELINES


def _models(*names: str) -> list[dict[str, str]]:
  return [{"model.name": n} for n in names]


SWEEPS = {
    # The paper's Table 2: the seven baselines and MIAN.
    "paper_table": lambda: _models(*BASELINES, "mian"),
    # The paper's ablations: MIAN, each module removed, and the IBIM encoder variants.
    "ablations": lambda: _models("mian", *ABLATIONS) + [{"model.name": "mian", "model.ibim_encoder": e}
                                                        for e in ("post_ln", "none")],
}


def names() -> list[str]:
  return sorted(SWEEPS)


def trials(name: str) -> list[dict[str, str]]:
  if name not in SWEEPS:
    raise KeyError(name)
  return SWEEPS[name]()
