"""Twisted's own ``twisted/test/test_factories.py``, run against our factory.

The installed source of Twisted's test module is read, the one import that
brings ``ReconnectingClientFactory`` is rewritten to take it from rcf_sync
(nothing else changes), and every test case in it runs through ``unittest``.
Two variants: with Twisted's ``Protocol`` (only the factory swapped) and with
ours (``rcf_sync.Protocol`` as well).
"""

import importlib.util
import re
import types
import unittest

import pytest

pytest.importorskip("twisted")

ORIGINAL_IMPORT = "from twisted.internet.protocol import Protocol, ReconnectingClientFactory\n"
REPLACEMENTS = {
    "twisted-protocol": (
        "from twisted.internet.protocol import Protocol\n"
        "from rcf_sync import ReconnectingClientFactory\n"
    ),
    "rcf_sync-protocol": "from rcf_sync import Protocol, ReconnectingClientFactory\n",
}


def twisted_source():
    spec = importlib.util.find_spec("twisted.test.test_factories")
    assert spec is not None and spec.origin, "twisted.test.test_factories is not installed"
    with open(spec.origin, encoding="utf-8") as f:
        return spec.origin, f.read()


def load_swapped(variant):
    """Twisted's test module with only the factory import swapped."""
    path, source = twisted_source()
    assert source.count(ORIGINAL_IMPORT) == 1, "the import to swap is not in Twisted's test module exactly once"
    swapped = source.replace(ORIGINAL_IMPORT, REPLACEMENTS[variant])
    module = types.ModuleType(f"swapped_test_factories_{variant.replace('-', '_')}")
    module.__file__ = path
    exec(compile(swapped, path, "exec"), module.__dict__)
    return module


def collected_tests(module):
    """(class name, method name) of every test in the module."""
    loader = unittest.TestLoader()
    names = []
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, unittest.TestCase):
            names.extend((obj.__name__, name) for name in loader.getTestCaseNames(obj))
    return sorted(names)


def run_one(module, class_name, method_name):
    case = getattr(module, class_name)(method_name)
    result = unittest.TestResult()
    case.run(result)
    return result


_DECLARED = sorted(set(re.findall(r"^    def (test_\w+)\(", twisted_source()[1], re.MULTILINE)))
_NAMES = collected_tests(load_swapped("twisted-protocol"))


def test_every_declared_test_is_collected():
    """If Twisted's module is loaded with the import swapped, then every test it declares is there to run."""
    assert [method for _, method in _NAMES] == sorted(method for _, method in _NAMES)
    assert sorted(method for _, method in _NAMES) == _DECLARED
    assert "test_stopTryingWhenConnected" in _DECLARED


@pytest.mark.parametrize("variant", sorted(REPLACEMENTS))
@pytest.mark.parametrize("class_name, method_name", _NAMES, ids=[m for _, m in _NAMES])
def test_twisted_factory_test_passes_against_ours(variant, class_name, method_name):
    """If one of Twisted's factory tests runs against our factory, then it passes."""
    module = load_swapped(variant)
    result = run_one(module, class_name, method_name)
    problems = [text for _, text in result.errors + result.failures]
    assert problems == [], "\n".join(problems)
    assert result.testsRun == 1 and not result.skipped and result.wasSuccessful()


def test_the_swap_really_uses_our_factory():
    """If the module is loaded with the import swapped, then its ReconnectingClientFactory is ours and Protocol is as chosen."""
    from twisted.internet import protocol as twisted_protocol

    import rcf_sync

    ours = load_swapped("rcf_sync-protocol")
    theirs = load_swapped("twisted-protocol")
    assert ours.ReconnectingClientFactory is rcf_sync.ReconnectingClientFactory
    assert theirs.ReconnectingClientFactory is rcf_sync.ReconnectingClientFactory
    assert ours.Protocol is rcf_sync.Protocol
    assert theirs.Protocol is twisted_protocol.Protocol


def test_a_broken_factory_fails_the_run():
    """If the factory under test lacks buildProtocol, then running Twisted's test reports the failure (the runner can fail)."""
    import rcf_sync

    module = load_swapped("rcf_sync-protocol")

    class NoBuild(rcf_sync.ReconnectingClientFactory):
        @property
        def buildProtocol(self):
            raise AttributeError("'NoBuild' object has no attribute 'buildProtocol'")

    module.ReconnectingClientFactory = NoBuild
    result = run_one(module, "ReconnectingFactoryTests", "test_stopTryingWhenConnected")
    assert not result.wasSuccessful()
    assert "buildProtocol" in "".join(text for _, text in result.errors + result.failures)
