"""Unit tests of the Twisted-shaped addresses and ``address_of``."""

import copy
import os
import pickle
import socket

import pytest

import rcf_sync
from rcf_sync import IPv4Address, IPv6Address, UNIXAddress, UNIXConnector
from rcf_sync._address import address_of

HAS_IPV6 = socket.has_ipv6


def _ipv6_loopback_works():
    if not HAS_IPV6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_reprs_are_twisteds():
    """If an address is repr()'d, then it reads as Twisted's does."""
    assert repr(IPv4Address("TCP", "127.0.0.1", 8080)) == "IPv4Address(type='TCP', host='127.0.0.1', port=8080)"
    assert repr(IPv6Address("TCP", "::1", 8080)) == \
        "IPv6Address(type='TCP', host='::1', port=8080, flowInfo=0, scopeID=0)"
    assert repr(UNIXAddress("/run/app.sock")) == "UNIXAddress('/run/app.sock')"
    assert repr(UNIXAddress(None)) == "UNIXAddress(None)"


def test_equal_values_are_equal_and_hash_alike():
    """If two addresses hold the same values, then they are equal with equal hashes; any difference makes them unequal."""
    a, b = IPv4Address("TCP", "127.0.0.1", 1), IPv4Address("TCP", "127.0.0.1", 1)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != IPv4Address("TCP", "127.0.0.1", 2)
    assert a != IPv4Address("UDP", "127.0.0.1", 1)
    assert IPv6Address("TCP", "::1", 1) == IPv6Address("TCP", "::1", 1, 0, 0)
    assert IPv6Address("TCP", "::1", 1) != IPv6Address("TCP", "::1", 1, scopeID=2)
    assert a != IPv6Address("TCP", "127.0.0.1", 1)
    assert a != ("TCP", "127.0.0.1", 1)


def test_unix_name_is_bytes_whatever_it_was_given_as():
    """If a UNIXAddress is made from str, bytes or a path object, then name is the bytes path and they are equal."""
    from pathlib import Path

    addresses = [UNIXAddress("/tmp/s"), UNIXAddress(b"/tmp/s"), UNIXAddress(Path("/tmp/s"))]
    assert {a.name for a in addresses} == {b"/tmp/s"}
    assert len(set(addresses)) == 1
    assert UNIXAddress(None).name is None and UNIXAddress(None) != UNIXAddress("/tmp/s")


def test_type_must_be_tcp_or_udp():
    """If an IP address is given another type, then ValueError names the allowed ones."""
    with pytest.raises(ValueError, match="'TCP' or 'UDP'"):
        IPv4Address("SCTP", "127.0.0.1", 1)
    with pytest.raises(ValueError, match="'TCP' or 'UDP'"):
        IPv6Address("tcp", "::1", 1)


def test_addresses_are_immutable():
    """If an attribute of an address is assigned, then AttributeError is raised and the value stays."""
    a = IPv4Address("TCP", "127.0.0.1", 1)
    with pytest.raises(AttributeError):
        a.port = 2
    with pytest.raises(AttributeError):
        UNIXAddress("/x").name = b"/y"
    assert a.port == 1


@pytest.mark.parametrize("address", [
    IPv4Address("TCP", "127.0.0.1", 80),
    IPv6Address("TCP", "fe80::1%lo", 80, 1, 1),
    UNIXAddress("/run/x.sock"),
    UNIXAddress(None),
], ids=repr)
def test_pickle_and_copy_round_trip(address):
    """If an address is pickled or copied, then an equal address of the same type comes back."""
    for twin in (pickle.loads(pickle.dumps(address)), copy.copy(address), copy.deepcopy(address)):
        assert type(twin) is type(address) and twin == address


def test_address_of_a_tcp_v4_connection():
    """If address_of() gets a connected IPv4 socket's names, then it returns IPv4Addresses with host and port."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            peer = address_of(client.getpeername(), client.family)
            host = address_of(client.getsockname(), client.family)
            accepted, client_address = listener.accept()
            client_port = client_address[1]
            accepted.close()
    assert peer == IPv4Address("TCP", "127.0.0.1", port)
    assert type(host) is IPv4Address and (host.type, host.host) == ("TCP", "127.0.0.1")
    assert host.port == client_port and host.port != port


@pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback here")
def test_address_of_a_tcp_v6_connection():
    """If address_of() gets a connected IPv6 socket's peer, then it returns an IPv6Address for ::1."""
    with socket.socket(socket.AF_INET6) as listener:
        listener.bind(("::1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with socket.create_connection(("::1", port), timeout=5) as client:
            peer = address_of(client.getpeername(), client.family)
            accepted, _ = listener.accept()
            accepted.close()
    assert peer == IPv6Address("TCP", "::1", port, 0, 0)


def test_address_of_a_scoped_ipv6_name_keeps_the_interface_in_host():
    """If address_of() gets a link-local IPv6 name with a scope, then host carries %interface as Twisted's does."""
    index, name = socket.if_nameindex()[0]
    address = address_of(("fe80::1", 80, 0, index), socket.AF_INET6)
    assert address == IPv6Address("TCP", f"fe80::1%{name}", 80, 0, index)


def test_address_of_a_unix_connection(tmp_path):
    """If address_of() gets a Unix client's names, then the peer is the path and the unbound host is UNIXAddress(None)."""
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(1)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            peer = address_of(client.getpeername(), client.family)
            host = address_of(client.getsockname(), client.family)
            accepted, _ = listener.accept()
            accepted.close()
    assert peer == UNIXAddress(path) and peer.name == os.fsencode(path)
    assert host == UNIXAddress(None)


def test_address_of_another_family_is_a_value_error():
    """If address_of() gets a family it has no address type for, then ValueError names the family."""
    with pytest.raises(ValueError, match="family"):
        address_of(("x",), 12345)


def test_unix_connector_destination_is_the_new_address():
    """If a Unix connector is asked for its destination, then it returns a UNIXAddress of its path."""
    assert UNIXConnector("/run/app.sock").getDestination() == UNIXAddress("/run/app.sock")
    assert UNIXConnector("/run/app.sock").getDestination().name == b"/run/app.sock"


def test_addresses_are_exported_under_the_package_name():
    """If the address classes are looked up on the package, then they report rcf_sync as their module."""
    for cls in (IPv4Address, IPv6Address, UNIXAddress):
        assert getattr(rcf_sync, cls.__name__) is cls and cls.__module__ == "rcf_sync"
        assert cls.__name__ in rcf_sync.__all__


# -- side by side with Twisted -------------------------------------------------------


def test_reprs_and_fields_match_twisteds():
    """If the same address is made with ours and Twisted's classes, then repr and fields match."""
    pytest.importorskip("twisted")
    from twisted.internet import address as twisted_address

    pairs = [
        (IPv4Address("TCP", "127.0.0.1", 8080), twisted_address.IPv4Address("TCP", "127.0.0.1", 8080)),
        (IPv6Address("TCP", "::1", 8080, 3, 4), twisted_address.IPv6Address("TCP", "::1", 8080, 3, 4)),
        (UNIXAddress("/run/x.sock"), twisted_address.UNIXAddress("/run/x.sock")),
        (UNIXAddress(None), twisted_address.UNIXAddress(None)),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)
        fields = [n for n in ("type", "host", "port", "flowInfo", "scopeID", "name") if hasattr(theirs, n)]
        assert [getattr(ours, n) for n in fields] == [getattr(theirs, n) for n in fields]
