"""A WSGI app for the prefork test: a module-level client, created when
gunicorn preloads the app in its master, used by every sync worker."""

import os

import fork_helpers

fork_helpers.setup(("127.0.0.1", int(os.environ["RCF_ECHO_PORT"])))


def app(environ, start_response):
    payload = environ.get("QUERY_STRING", "").encode() or b"empty"
    pid, port, reply = fork_helpers.ask(payload)
    body = b"%d %d " % (pid, port) + reply
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
