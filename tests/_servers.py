"""Real servers for the suite: Debian's ``redis-server`` and ``nginx``.

Each server is started by the tests on a free loopback port, in a temporary
directory of its own, and stopped by the process it started (nginx: by its
process group, master and workers together). ``kill()`` is a SIGKILL, and
``start()`` after it brings the server back on the same port, so tests can
restart a server under load.

No pytest here: the monkey-patched suite imports this module in a plain
subprocess. A missing binary raises :class:`ServerMissing`, whose message
holds the install command; the test modules turn it into a skip, or into a
failure when ``CI`` is set (see :func:`ci`).

Also here: a small RESP (Redis protocol) reader that reads exactly one reply.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

__all__ = ["ServerMissing", "RedisServer", "NginxServer", "ci", "find_binary", "free_port",
           "RespError", "Desync", "resp_command", "read_reply", "request"]

#: How long a server may take to accept connections after it was started.
START_TIMEOUT = 20.0


class ServerMissing(RuntimeError):
    """The server's program is not installed (the message says how to get it)."""


def ci():
    """True when the suite runs in CI (``CI=true``, ``CI=1``...): a missing
    server must then fail the run instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def find_binary(name, package):
    """The path of the program ``name`` (also looked for in the sbin
    directories, which are not on every user's PATH)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise ServerMissing(f"{name} is not installed: apt-get install {package}")
    return found


def free_port():
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A program listening on 127.0.0.1:``port``, run in a session of its
    own so that its whole process group can be signalled."""

    name = "server"

    def __init__(self, directory):
        self.dir = directory
        self.port = free_port()
        self.host = "127.0.0.1"
        self.proc = None
        self.starts = 0
        self._log = os.path.join(directory, f"{self.name}.out")

    @property
    def address(self):
        return (self.host, self.port)

    def command(self):
        raise NotImplementedError

    def start(self):
        """Start the server (again, on the same port) and return once it
        accepts connections; RuntimeError with its output if it does not."""
        if self.proc is not None:
            raise RuntimeError(f"{self.name} is already running")
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=self.dir)
        self.starts += 1
        self._wait_listening()
        return self

    def _wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(self.address, timeout=1):
                    return
            except OSError:
                pass
            # The pause between two tries is a wait on the process: a server
            # that exits at once is reported at once.
            try:
                self.proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                if time.monotonic() < deadline:
                    continue
                self.kill()
                raise RuntimeError(f"{self.name} did not listen on port {self.port} within"
                                   f" {START_TIMEOUT:g}s:\n{self.output()}") from None
            code, self.proc = self.proc.returncode, None
            raise RuntimeError(f"{self.name} exited with status {code}:\n{self.output()}")

    def output(self):
        try:
            with open(self._log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def _signal(self, proc, sig):
        os.kill(proc.pid, sig)

    def kill(self):
        """SIGKILL the server (nothing is saved, nothing is said to clients)
        and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            self._signal(proc, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def restart(self):
        """SIGKILL, then start again on the same port."""
        self.kill()
        return self.start()

    def stop(self):
        """Stop for good (SIGKILL: these servers keep nothing) and remove
        the temporary directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RedisServer(_Server):
    """``redis-server`` on a free loopback port, persisting nothing. With
    ``tls=(cert_file, key_file, ca_file)`` it speaks only TLS (``--port 0``,
    ``--tls-port``) and does not ask clients for certificates."""

    name = "redis-server"

    def __init__(self, directory=None, tls=None):
        self.binary = find_binary("redis-server", "redis-server")
        super().__init__(directory or tempfile.mkdtemp(prefix="rcf-redis-"))
        self.tls = tls

    def command(self):
        cmd = [self.binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", self.dir, "--daemonize", "no", "--logfile", "", "--databases", "1"]
        if self.tls is None:
            return cmd + ["--port", str(self.port)]
        cert, key, ca = self.tls
        return cmd + ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert,
                      "--tls-key-file", key, "--tls-ca-cert-file", ca,
                      "--tls-auth-clients", "no"]


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    default_type application/octet-stream;
    keepalive_requests {keepalive_requests};
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/html;
    }}
}}
"""


class NginxServer(_Server):
    """nginx serving ``files`` (name -> bytes) from a temporary directory on
    a free loopback port. It answers ``Connection: close`` to every
    ``keepalive_requests``-th request on a connection."""

    name = "nginx"

    def __init__(self, files, directory=None, keepalive_requests=5):
        self.binary = find_binary("nginx", "nginx")
        super().__init__(directory or tempfile.mkdtemp(prefix="rcf-nginx-"))
        self.files = dict(files)
        os.makedirs(os.path.join(self.dir, "html"))
        os.makedirs(os.path.join(self.dir, "tmp"))
        for name, body in self.files.items():
            with open(os.path.join(self.dir, "html", name), "wb") as f:
                f.write(body)
        # As root, nginx runs its worker as another user unless told; let it
        # be root so that it can read our temporary directory.
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(dir=self.dir, port=self.port, user=user,
                                      keepalive_requests=keepalive_requests))

    def command(self):
        return [self.binary, "-c", self.conf, "-p", self.dir, "-e", os.path.join(self.dir, "error.log")]

    def logged_requests(self, timeout=10):
        """The request lines of the access log, for every request answered so far.

        nginx writes a request's log line after sending its response, so a
        client can hold the answer before the line exists. One worker serves
        every connection in turn: once it has answered a marker request sent
        now, every earlier request has been logged."""
        marker = f"/.rcf-marker-{uuid.uuid4().hex}"
        with socket.create_connection(self.address, timeout=timeout) as sock:
            sock.sendall(f"GET {marker} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            for _ in range(1000):
                if not sock.recv(65536):
                    break
            else:
                raise AssertionError("nginx kept the marker request's connection open")
        with open(os.path.join(self.dir, "access.log")) as log:
            lines = [line.split('"')[1] for line in log if '"' in line]
        return [line for line in lines if marker not in line]

    def _signal(self, proc, sig):
        # start_new_session made the master the leader of its own group; the
        # workers it forks stay in that group.
        os.killpg(proc.pid, sig)

    def output(self):
        text = super().output()
        try:
            with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
                text += f.read()[-4000:]
        except OSError:
            pass
        return text


# -- a small RESP reader ---------------------------------------------------------


class RespError(Exception):
    """A ``-ERR ...`` reply from the server (the stream is fine)."""


class Desync(Exception):
    """The byte stream does not hold exactly the one reply expected: a
    broken stream (give it to ``lost_on=``), never to be read on."""


def resp_command(*args):
    """The RESP encoding of one command."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _Reader:
    MAX_READS = 10000

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.reads = 0

    def more(self):
        self.reads += 1
        if self.reads > self.MAX_READS:
            raise Desync("reply too long")
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("the server closed the connection mid-reply")
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self.more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exactly(self, n):
        while len(self.buf) < n + 2:
            self.more()
        data, crlf, self.buf = self.buf[:n], self.buf[n:n + 2], self.buf[n + 2:]
        if crlf != b"\r\n":
            raise Desync(f"bulk string not followed by CRLF: {crlf!r}")
        return data

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.exactly(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise Desync(f"not a RESP reply: {line[:40]!r}")


def read_reply(sock):
    """Read exactly one reply from ``sock`` (no other request in flight, so
    the server sends nothing after it): bytes beyond it mean the stream is
    not what we think it is, and raise :class:`Desync`. An ``-ERR`` reply
    raises :class:`RespError`."""
    reader = _Reader(sock)
    reply = reader.reply()
    if reader.buf:
        raise Desync(f"{len(reader.buf)} bytes after the reply: {reader.buf[:40]!r}")
    if isinstance(reply, RespError):
        raise reply
    return reply


def request(sock, *args, timeout=5.0):
    """Send one command on ``sock`` and return its one reply."""
    sock.settimeout(timeout)
    sock.sendall(resp_command(*args))
    return read_reply(sock)
