"""Sphinx configuration of the mian_jax documentation (MyST markdown, as JAX, Flax, Optax and Orbax do).

    pip install -e ".[docs]" && python -m sphinx -W -b html docs docs/_build/html

`reference/config.md` is written at build time from mian_jax/config.py's fields and their comments (the
source `--print-config` reads); the API pages are autodoc over the docstrings. Warnings are errors in CI.
"""

from pathlib import Path

from docs import generate  # run from the repository root: `python -m sphinx` puts it on sys.path

project = "mian_jax"
author = "mian_jax"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
# docs/results holds the sweeps' own results.md files: linked as files, not pages.
exclude_patterns = ["_build", "results/**", "README.md"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
html_theme = "alabaster"
html_static_path: list[str] = []

generate.write_config_reference(Path(__file__).parent / "reference" / "config.md")
