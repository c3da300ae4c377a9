"""The documentation says what the code does: the configuration reference is the one the code generates,
and every link of the README and the docs pages points at a file that exists."""

import re
from pathlib import Path

from docs import generate

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "reference").glob("*.md"))]


def test_the_config_reference_is_the_generated_one():
  page = ROOT / "docs" / "reference" / "config.md"
  assert page.read_text() == generate.config_reference(), (
    "docs/reference/config.md is stale: the docs build rewrites it (python -m sphinx -b html docs "
    "docs/_build/html), or run: python -c 'from docs import generate; generate.write_config_reference("
    "__import__(\"pathlib\").Path(\"docs/reference/config.md\"))'"
  )


def test_every_link_points_at_a_file_that_exists():
  broken = []
  for page in PAGES:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
      if "://" not in target and not (page.parent / target).exists():
        broken.append(f"{page.relative_to(ROOT)} -> {target}")
  assert broken == []


def test_the_readme_stays_a_first_page():
  assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_results_table_is_the_one_its_source_gives():
  marked = 0
  for page in generate.pages():
    text = page.read_text()
    marked += len(generate.MARKED.findall(text))
    assert generate.with_tables(text) == text, (
      f"a table of {page.relative_to(ROOT)} differs from its results.csv: python -m docs.generate rewrites it"
    )
  assert marked >= 4


def test_a_table_follows_its_source(tmp_path):
  source = ROOT / "docs" / "results" / "ml100k-converged" / "real_table.csv"
  page = f"x\n<!-- table: {source} -->\n| stale |\n<!-- end table -->\ny\n"
  fresh = generate.with_tables(page)
  assert (
    "| stale |" not in fresh
    and "| dcn | 3 | **0.7258 ± 0.0005** | 0.7330 ± 0.0032 |" in fresh
    and fresh.endswith("<!-- end table -->\ny\n")
  )
  assert generate.with_tables(fresh) == fresh


def test_a_selection_table_is_rebuilt_by_its_rule(tmp_path):
  """A selection's results.csv (one row per trial) gives the table `mian_jax.selection` writes: mean ± std per
  data set, the score against the previous default, the highest score chosen."""
  source = tmp_path / "results.csv"
  rows = ["data_set,configuration,seed,valid_auc,auc,source,trial"]
  for d, base in (("a", 0.70), ("b", 0.80)):
    for seed in range(3):
      rows.append(f"{d},previous default,{seed},{base + 0.001 * seed},0,x,t")
      rows.append(f"{d},other,{seed},{base + 0.002 + 0.001 * seed},0,x,t")
  source.write_text("\n".join(rows) + "\n")
  table = generate.table_from(source)
  assert "| previous default | 0.7010 ± 0.0010 | 0.8010 ± 0.0010 | +0.0000 |" in table
  assert "| other | 0.7030 ± 0.0010 | 0.8030 ± 0.0010 | +0.0020 | 1.00 | **chosen** |" in table
