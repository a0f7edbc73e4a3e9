"""The API reference (docs/api.rst) documents every public name."""

import os
import re

import pytest

import rcf_sync
import rcf_sync.testing

API = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "api.rst")


def documented():
    with open(API, encoding="utf-8") as f:
        text = f.read()
    return set(re.findall(r"^\.\. (?:autoclass|autofunction|data):: +(\S+)\s*$", text, re.M))


@pytest.mark.parametrize("module", [rcf_sync, rcf_sync.testing], ids=lambda m: m.__name__)
def test_every_public_name_is_in_the_api_reference(module):
    """If a name is in a public module's __all__, then docs/api.rst documents it."""
    missing = sorted(set(module.__all__) - documented())
    assert missing == []


def test_the_reference_names_nothing_that_is_not_public():
    """If docs/api.rst documents a name, then it is public (in rcf_sync or rcf_sync.testing)."""
    public = set(rcf_sync.__all__) | set(rcf_sync.testing.__all__)
    assert documented() - public == set()
