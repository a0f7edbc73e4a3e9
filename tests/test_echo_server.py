"""rcf_sync.testing.EchoServer, the loopback server the kit ships."""

import socket

import pytest

from rcf_sync.testing import EchoServer


def test_echoes_and_restarts_on_the_same_port():
    """If the server is stopped and started, then it echoes again on the same port."""
    with EchoServer() as server:
        port = server.port
        for _ in range(2):
            with socket.create_connection(server.address, 5) as s:
                s.sendall(b"hi")
                assert s.recv(2) == b"hi"
            server.stop()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(server.address, 5).close()
            server.start()
            assert server.port == port


def test_stop_closes_open_connections():
    """If the server stops, then an open connection reads end-of-file."""
    server = EchoServer().start()
    with socket.create_connection(server.address, 5) as s:
        assert server.wait_accepted(1, 5)
        server.stop()
        s.settimeout(5)
        assert s.recv(10) == b""


def test_loopback_only_and_known_modes():
    """If the host is not loopback or the mode unknown, then ValueError says so."""
    with pytest.raises(ValueError, match="loopback only"):
        EchoServer(host="0.0.0.0")
    with pytest.raises(ValueError, match="mode must be one of"):
        EchoServer(mode="shout")
