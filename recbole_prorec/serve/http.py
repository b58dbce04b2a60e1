"""A small JSON endpoint over a store, from the standard library: `GET /recommendations/<user>?k=10`.

Why `http.server` and not an ASGI framework (Starlette or FastAPI under uvicorn): none is installed here, the
package's constraints would have to grow for a page of code, and a lookup is a sub-millisecond blocking SQLite
read, which an async framework would hand to a thread pool anyway. What such a server gives for free is written
out here and tested: a bounded pool of worker threads, each with its own SQLite connection (a connection is never
shared across threads); a per-connection timeout, so a client that sends nothing cannot hold a worker; every
failure answered in JSON (400 for a bad request, 500 for a store error, logged with its traceback); and a store
replaced on disk (a new precache or refresh) reopened on the next request. What it does not give: HTTP/1.1
keep-alive, TLS, access logs, graceful reloads. For a production service put `RecommendationStore.top_k` behind
the service's own server, or this one behind a reverse proxy.
"""

import json
import logging
import pathlib
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer

from recbole_prorec.serve.store import open_store

logger = logging.getLogger(__name__)
PREFIX = "/recommendations/"


class StoreConnections:
    """One read-only store per thread, reopened when the file at `path` was replaced (a new precache or refresh:
    both rename a new file into place, so the open one would keep serving the old lists)."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.local = threading.local()

    def get(self):
        store = getattr(self.local, "store", None)
        if store is not None and store.replaced():
            store.close()
            store = self.local.store = None
        if store is None:
            store = self.local.store = open_store(self.path)
        return store


class PooledHTTPServer(HTTPServer):
    """An `HTTPServer` answering on a fixed pool of `threads` threads: bounded concurrency, and thread-local
    connections that live as long as their thread (`ThreadingHTTPServer` starts a thread per request)."""

    def __init__(self, address, handler, threads):
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="recommendations")
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        self.executor.submit(self.process_request_thread, request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request, client_address):
        logger.exception(f"request from {client_address[0]}:{client_address[1]} failed")

    def server_close(self):
        super().server_close()
        self.executor.shutdown(wait=True, cancel_futures=True)


def parse_k(values):
    """The `k` of a query string (None when absent), or a `ValueError` saying what was expected."""
    if not values:
        return None
    raw = values[0]
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"k must be an integer >= 1, got {raw!r}")
    return int(raw)


def make_server(store_path, host="127.0.0.1", port=8000, timeout=10.0, threads=8):
    """A `PooledHTTPServer` answering lookups from the store at `store_path` (port 0: any free port).

    `timeout`: seconds a connection may stay silent before it is closed. Opens the store once first, so a missing
    or foreign file is a `StoreError` at start, not on the first request.
    """
    open_store(store_path).close()
    connections = StoreConnections(store_path)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            url = urllib.parse.urlparse(self.path)
            if not url.path.startswith(PREFIX) or len(url.path) == len(PREFIX):
                return self.answer(404, {"error": f"unknown path {url.path}; use {PREFIX}<user>?k=<k>"})
            user = urllib.parse.unquote(url.path[len(PREFIX) :])
            try:
                k = parse_k(urllib.parse.parse_qs(url.query).get("k"))
            except ValueError as error:
                return self.answer(400, {"error": str(error)})
            try:
                result = connections.get().top_k(user, k)
            except Exception as error:  # a store replaced by garbage, a corrupt row, a failing disk: the server's fault
                logger.exception(f"GET {self.path}: {error}")
                return self.answer(500, {"error": f"{type(error).__name__}: {error}"})
            return self.answer(200, result._asdict())

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # noqa: A002 (the stdlib's name); one line per request is noise
            logger.debug(format % args)

        def log_error(self, format, *args):  # noqa: A002 (timeouts, malformed requests)
            logger.warning(f"{self.address_string()}: {format % args}")

    Handler.timeout = timeout  # StreamRequestHandler sets it on each connection's socket
    return PooledHTTPServer((host, port), Handler, threads)
