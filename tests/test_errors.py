"""Tests of the exceptions rcf_sync raises."""

import copy
import pickle
import socket

import pytest

import rcf_sync
from rcf_sync import (
    AlreadyCalled,
    AlreadyCancelled,
    ClientClosed,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectTimeout,
    GaveUp,
    NotConnectingError,
    RCFError,
)
from rcf_sync._errors import _timeout_compatible

ALL_ERRORS = [
    RCFError,
    ConnectionLost,
    ConnectionDone,
    ConnectionAborted,
    ConnectTimeout,
    GaveUp,
    ClientClosed,
    NotConnectingError,
    AlreadyCalled,
    AlreadyCancelled,
]

STDLIB_BASES = {
    ConnectionLost: ConnectionError,
    ConnectionDone: ConnectionError,
    ConnectionAborted: ConnectionError,
    ConnectTimeout: TimeoutError,
    NotConnectingError: RuntimeError,
    AlreadyCalled: ValueError,
    AlreadyCancelled: ValueError,
}

ids = [cls.__name__ for cls in ALL_ERRORS]


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=ids)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip_keeps_message_destination_and_reason(cls, protocol):
    """If an error is pickled and unpickled, then its type, message, destination and reason survive."""
    error = cls("connect to db:5432 failed", destination="db:5432", reason=ConnectionRefusedError(111, "refused"))
    copy_ = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert type(copy_) is cls
    assert copy_.message == "connect to db:5432 failed"
    assert str(copy_) == "connect to db:5432 failed"
    assert copy_.destination == "db:5432"
    assert type(copy_.reason) is ConnectionRefusedError
    assert copy_.reason.args == (111, "refused")


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=ids)
def test_positional_arguments_round_trip(cls):
    """If an error is built with positional arguments, then they land in message, destination and reason and survive pickling."""
    error = cls("lost", "/run/app.sock", "EOF")
    copy_ = pickle.loads(pickle.dumps(error))
    assert (copy_.message, copy_.destination, copy_.reason) == ("lost", "/run/app.sock", "EOF")


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=ids)
def test_defaults_round_trip(cls):
    """If an error is built without arguments, then it has an empty message and no destination or reason, pickled or not."""
    for error in (cls(), pickle.loads(pickle.dumps(cls()))):
        assert (str(error), error.message, error.destination, error.reason) == ("", "", None, None)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=ids)
def test_copy_and_deepcopy_keep_fields(cls):
    """If an error is copied or deep-copied, then message, destination and reason are kept."""
    error = cls("m", destination="d", reason=KeyError("k"))
    for duplicate in (copy.copy(error), copy.deepcopy(error)):
        assert type(duplicate) is cls
        assert (duplicate.message, duplicate.destination) == ("m", "d")
        assert duplicate.reason.args == ("k",)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=ids)
def test_str_is_the_message(cls):
    """If an error is turned into a string, then the result is exactly its message."""
    error = cls("exactly this", destination="h:1", reason=OSError("x"))
    assert str(error) == "exactly this"
    assert error.args == ("exactly this",)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=ids)
def test_every_error_is_an_rcf_error(cls):
    """If any rcf_sync error is raised, then except RCFError catches it."""
    with pytest.raises(RCFError):
        raise cls("x")
    assert issubclass(cls, Exception)


@pytest.mark.parametrize("cls, base", sorted(STDLIB_BASES.items(), key=lambda kv: kv[0].__name__),
                         ids=lambda v: v.__name__)
def test_stdlib_base_catches_the_error(cls, base):
    """If an error has a standard-library base, then except <that base> catches it."""
    with pytest.raises(base):
        raise cls("x", destination="d")


def test_connection_lost_is_a_connection_error_not_a_timeout():
    """If ConnectionLost is raised, then it is a ConnectionError (so an OSError) but not a TimeoutError."""
    error = ConnectionLost("gone", destination="h:1")
    assert isinstance(error, ConnectionError) and isinstance(error, OSError)
    assert not isinstance(error, TimeoutError)


def test_connect_timeout_is_a_timeout_error_not_a_connection_error():
    """If ConnectTimeout is raised, then it is a TimeoutError but not a ConnectionError."""
    error = ConnectTimeout("slow", destination="h:1")
    assert isinstance(error, TimeoutError)
    assert not isinstance(error, ConnectionError)


@pytest.mark.parametrize("cls", [ConnectionLost, ConnectionDone, ConnectionAborted, ConnectTimeout],
                         ids=lambda v: v.__name__)
def test_oserror_subclasses_do_not_misread_arguments(cls):
    """If an OSError-based error gets three arguments, then they are not taken for errno, strerror and filename."""
    error = cls("msg", "dest", "why")
    assert error.errno is None and error.strerror is None and error.filename is None
    assert pickle.loads(pickle.dumps(error)).errno is None


def test_errors_are_exported_under_the_package_name():
    """If an error is looked up on the package, then it reports rcf_sync as its module."""
    for cls in ALL_ERRORS:
        assert getattr(rcf_sync, cls.__name__) is cls
        assert cls.__module__ == "rcf_sync"


def test_connection_done_is_not_a_connection_lost():
    """If an orderly close is reported as ConnectionDone, then except ConnectionLost does not catch it."""
    with pytest.raises(ConnectionDone):
        try:
            raise ConnectionDone("closed cleanly", destination="h:1")
        except ConnectionLost:  # pragma: no cover - the point of the test
            pytest.fail("ConnectionDone was caught as ConnectionLost")
    assert not issubclass(ConnectionDone, ConnectionLost)
    assert not issubclass(ConnectionLost, ConnectionDone)


def test_connection_aborted_is_a_connection_lost():
    """If abortConnection() ends a connection, then its ConnectionAborted is caught by except ConnectionLost, as in Twisted."""
    with pytest.raises(ConnectionLost):
        raise ConnectionAborted("aborted", destination="h:1")
    assert not issubclass(ConnectionAborted, ConnectionDone)


def test_a_socket_timeout_is_reported_as_a_timeout_error():
    """If a socket.timeout is made timeout-compatible, then it is a TimeoutError with its message, chained to the original where the two differ (Python 3.9)."""
    original = socket.timeout("timed out")
    converted = _timeout_compatible(original)
    assert isinstance(converted, TimeoutError) and str(converted) == "timed out"
    assert converted is original or converted.__cause__ is original
    other = ConnectionResetError("reset")
    assert _timeout_compatible(other) is other
