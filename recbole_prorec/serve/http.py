"""A small JSON endpoint over a store, from the standard library: `GET /recommendations/<user>?k=10`.

For trying a store from a browser or curl; a production service would put the same `top_k` behind its own server.
"""

import json
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from recbole_prorec.serve.store import open_store


def make_server(store_path, host="127.0.0.1", port=8000):
    """A `ThreadingHTTPServer` answering lookups from the store at `store_path` (port 0: any free port)."""
    store = open_store(store_path)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            url = urllib.parse.urlparse(self.path)
            prefix = "/recommendations/"
            if not url.path.startswith(prefix) or len(url.path) == len(prefix):
                return self.answer(404, {"error": f"unknown path {url.path}; use {prefix}<user>?k=<k>"})
            user = urllib.parse.unquote(url.path[len(prefix) :])
            query = urllib.parse.parse_qs(url.query)
            try:
                k = int(query["k"][0]) if "k" in query else None
                result = store.top_k(user, k)
            except ValueError as error:
                return self.answer(400, {"error": str(error)})
            return self.answer(200, result._asdict())

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # quiet: one line per request is noise in a terminal
            pass

    return ThreadingHTTPServer((host, port), Handler)
