"""Sphinx configuration of the API reference.

Build: python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import rcf_sync

project = "rcf_sync"
author = "The rcf_sync developers"
copyright = "2026, The rcf_sync developers"
release = rcf_sync.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

# Signatures show the annotations as written; the descriptions say the rest.
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Names only type checkers import (``if TYPE_CHECKING:``) stay unresolved text.
autodoc_type_aliases = {}

# No network at build time: cross-references to the standard library are
# written out by hand instead of fetched.
intersphinx_mapping = {}

html_theme = "furo"
html_title = f"rcf_sync {release}"
exclude_patterns = ["_build"]
