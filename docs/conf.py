"""Sphinx configuration of the API reference: ``sphinx-build -W -b html docs docs/_build/html``.

The reference is built from the docstrings (autodoc, Sphinx-style ``:param:`` fields; napoleon
also reads Google/NumPy sections), plus the README's guide pages through MyST.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package

project = "pyro-seqvae"
author = "pyro-seqvae authors"
copyright = "the pyro-seqvae authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
# heavy or optional imports are real: the reference documents the installed library
napoleon_use_param = True
# MyST: README headings become link targets (``#set-up-two-commands``)
myst_heading_anchors = 3
# intersphinx is offline unless a cache exists: no inventories are fetched, so the build never
# touches the network (the test suite builds this reference with warnings as errors)
intersphinx_mapping = {}

html_theme = "alabaster"
html_static_path = []
