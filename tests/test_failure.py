"""Unit tests of ``rcf_sync.Failure`` and ``as_failure``, and (with Twisted
installed) the same operations side by side with Twisted's ``Failure``."""

import copy
import pickle

import pytest

import rcf_sync
from rcf_sync import ConnectionAborted, ConnectionDone, ConnectionLost, Failure
from rcf_sync._failure import as_failure


def raised(exc):
    """``exc`` after it has been raised and caught (so it has a traceback)."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_wraps_an_exception_instance():
    """If a Failure is built from an exception, then value, type and tb are that exception's."""
    exc = ConnectionRefusedError(111, "Connection refused")
    f = Failure(exc)
    assert f.value is exc and f.type is ConnectionRefusedError and f.tb is None
    caught = raised(KeyError("k"))
    assert Failure(caught).tb is caught.__traceback__


def test_without_arguments_wraps_the_exception_being_handled():
    """If Failure() is called inside an except block, then it wraps the exception being handled."""
    try:
        raise ValueError("bad")
    except ValueError:
        f = Failure()
    assert f.type is ValueError and f.getErrorMessage() == "bad" and f.tb is not None


def test_without_arguments_outside_except_raises_value_error():
    """If Failure() is called with no exception being handled, then it raises ValueError."""
    with pytest.raises(ValueError, match="none is being handled"):
        Failure()


def test_from_a_failure_copies_it():
    """If a Failure is built from another, then it has the same value, type and tb."""
    first = Failure(raised(KeyError("k")))
    second = Failure(first)
    assert (second.value, second.type, second.tb) == (first.value, first.type, first.tb)


def test_check_matches_classes_bases_and_qualified_names():
    """If check() is given the type, a base or a qualified name, then it returns that argument; otherwise None."""
    f = Failure(ConnectionAborted("aborted"))
    assert f.check(ConnectionAborted) is ConnectionAborted
    assert f.check(KeyError, ConnectionLost) is ConnectionLost
    assert f.check(ConnectionError) is ConnectionError
    assert f.check("rcf_sync.ConnectionLost") == "rcf_sync.ConnectionLost"
    assert f.check("builtins.OSError") == "builtins.OSError"
    assert f.check(ConnectionDone) is None
    assert f.check(KeyError, "builtins.KeyError") is None
    assert f.check() is None


def test_check_tells_an_orderly_close_from_a_loss():
    """If the reason is ConnectionDone, then check(ConnectionLost) is None; for ConnectionLost it matches."""
    assert Failure(ConnectionDone()).check(ConnectionLost) is None
    assert Failure(ConnectionLost()).check(ConnectionDone) is None
    assert Failure(ConnectionLost()).check(ConnectionLost) is ConnectionLost


def test_trap_returns_the_match_or_reraises_the_exception():
    """If trap() matches, then it returns the match; if not, then it raises the wrapped exception itself."""
    exc = ConnectionRefusedError(111, "Connection refused")
    f = Failure(exc)
    assert f.trap(KeyError, OSError) is OSError
    with pytest.raises(ConnectionRefusedError) as info:
        f.trap(KeyError, ConnectionDone)
    assert info.value is exc


def test_raise_exception_raises_the_value_with_its_traceback():
    """If raiseException() is called, then the wrapped exception is raised with its original traceback frames."""
    caught = raised(KeyError("k"))
    original_frame = caught.__traceback__.tb_frame
    f = Failure(caught)
    with pytest.raises(KeyError) as info:
        f.raiseException()
    assert info.value is caught
    frames = []
    tb = info.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    assert original_frame in frames


def test_error_message_is_str_of_the_value():
    """If getErrorMessage() is called, then it returns str(value), decoding bytes and surviving a broken __str__."""

    class Broken(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert Failure(ConnectionRefusedError(111, "Connection refused")).getErrorMessage() == \
        "[Errno 111] Connection refused"
    assert Failure(ValueError()).getErrorMessage() == ""
    assert Failure(ConnectionDone("closed", destination="h:1")).getErrorMessage() == "closed"
    assert Failure(Failure(KeyError("k"))).getErrorMessage() == "'k'"
    assert "Broken" in Failure(Broken()).getErrorMessage()


def test_repr_names_our_class_the_error_type_and_message():
    """If a Failure is repr()'d, then it reads <rcf_sync.Failure module.Type: message>."""
    assert repr(Failure(ConnectionRefusedError(111, "Connection refused"))) == \
        "<rcf_sync.Failure builtins.ConnectionRefusedError: [Errno 111] Connection refused>"
    assert repr(Failure(ConnectionDone("Connection was closed cleanly."))) == \
        "<rcf_sync.Failure rcf_sync.ConnectionDone: Connection was closed cleanly.>"


def test_str_is_the_brief_traceback():
    """If a Failure is str()'d, then it is [Failure instance: ...] with the type, message and frames."""
    assert str(Failure(KeyError("k"))) == \
        "[Failure instance: Traceback (failure with no frames): <class 'KeyError'>: 'k'\n]"
    text = str(Failure(raised(KeyError("k"))))
    assert text.startswith("[Failure instance: Traceback: <class 'KeyError'>: 'k'\n")
    assert f"{__file__}:" in text and ":raised\n" in text and text.endswith("]")


def test_get_traceback_reads_like_python_or_twisted_without_frames():
    """If getTraceback() is called, then it shows the frames when there are some and Twisted's 'Failure:' line when not."""
    assert Failure(KeyError("k")).getTraceback() == \
        "Traceback (most recent call last):\nFailure: builtins.KeyError: 'k'\n"
    text = Failure(raised(KeyError("k"))).getTraceback()
    assert text.startswith("Traceback (most recent call last):\n  File ")
    assert "in raised" in text and text.endswith("builtins.KeyError: 'k'\n")


def test_parents_lists_the_qualified_names_of_the_type_and_its_bases():
    """If parents is read, then it lists the type's MRO as qualified names."""
    assert Failure(ConnectionAborted()).parents[:3] == [
        "rcf_sync.ConnectionAborted", "rcf_sync.ConnectionLost", "rcf_sync.RCFError"]


def test_clean_failure_drops_tracebacks():
    """If cleanFailure() is called, then the failure and its exception hold no traceback; type and message stay."""
    f = Failure(raised(KeyError("k")))
    f.cleanFailure()
    assert f.tb is None and f.value.__traceback__ is None
    assert (f.type, f.getErrorMessage()) == (KeyError, "'k'")


@pytest.mark.parametrize("duplicate", [lambda f: pickle.loads(pickle.dumps(f)), copy.copy, copy.deepcopy],
                         ids=["pickle", "copy", "deepcopy"])
def test_pickles_and_copies_without_the_traceback(duplicate):
    """If a Failure is pickled or copied, then type and value survive and the traceback is dropped."""
    f = Failure(raised(ConnectionLost("gone", destination="h:1")))
    twin = duplicate(f)
    assert twin.type is ConnectionLost and twin.tb is None
    assert (twin.value.message, twin.value.destination) == ("gone", "h:1")
    assert f.tb is not None


def test_as_failure_keeps_no_traceback_and_passes_failures_through():
    """If as_failure() gets an exception, then it wraps it without a traceback; a Failure comes back unchanged."""
    caught = raised(ConnectionRefusedError(111, "Connection refused"))
    f = as_failure(caught)
    assert isinstance(f, Failure) and f.value is caught and f.tb is None
    assert caught.__traceback__ is not None  # the caller's exception is left alone
    assert as_failure(f) is f


def test_failure_is_exported_under_the_package_name():
    """If Failure is looked up on the package, then it reports rcf_sync as its module."""
    assert rcf_sync.Failure is Failure and Failure.__module__ == "rcf_sync"
    assert "Failure" in rcf_sync.__all__


# -- side by side with Twisted -------------------------------------------------------


def _twisted():
    pytest.importorskip("twisted")
    from twisted.python.failure import Failure as TwistedFailure

    return TwistedFailure


def _both(exc):
    return Failure(exc), _twisted()(exc)


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionDone("Connection was closed cleanly."),
    ValueError(),
    KeyError("k"),
    OSError("plain"),
], ids=lambda e: type(e).__name__)
def test_repr_str_and_message_match_twisted(exc):
    """If the same exception is wrapped by both, then repr (up to the class name), str, message and traceback text match."""
    ours, theirs = _both(exc)
    assert repr(ours).replace("rcf_sync.Failure", "twisted.python.failure.Failure") == repr(theirs)
    assert str(ours) == str(theirs)
    assert ours.getErrorMessage() == theirs.getErrorMessage()
    assert ours.getTraceback() == theirs.getTraceback()
    assert ours.getBriefTraceback() == theirs.getBriefTraceback()
    assert ours.parents == theirs.parents


def test_brief_traceback_with_frames_matches_twisted():
    """If the exception carries a traceback, then both brief tracebacks list the same frames."""
    exc = raised(KeyError("k"))
    ours, theirs = _both(exc)
    assert ours.getBriefTraceback() == theirs.getBriefTraceback()


def test_check_and_trap_match_twisted():
    """If both check and trap the same types, then they return the same values and raise the same exception."""
    exc = ConnectionAborted("aborted")
    ours, theirs = _both(exc)
    for types in [(ConnectionAborted,), (KeyError, ConnectionLost), (ConnectionDone,),
                  ("rcf_sync.ConnectionLost",), ("builtins.Exception",), (OSError,), ()]:
        assert ours.check(*types) == theirs.check(*types), types
    assert ours.trap(ConnectionLost) is theirs.trap(ConnectionLost) is ConnectionLost
    for f in (ours, theirs):
        with pytest.raises(ConnectionAborted) as info:
            f.trap(ConnectionDone)
        assert info.value is exc


def test_reraised_exception_keeps_its_traceback_in_both():
    """If raiseException() is used by both, then both raise the same exception object."""
    exc = raised(KeyError("k"))
    for f in _both(exc):
        with pytest.raises(KeyError) as info:
            f.raiseException()
        assert info.value is exc
