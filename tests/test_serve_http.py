"""The HTTP endpoint: answers, bad requests, a replaced store, SQLite errors, threads and slow clients."""

import concurrent.futures
import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request

from recbole_prorec.serve.http import make_server
from recbole_prorec.serve.store import write_store


def small_store(path, k=3, users=("u1", "u2")):
    meta = {"model": "M", "dataset": "d", "checkpoint": "c.pth", "checkpoint_sha256": "0" * 64, "k": k}
    meta.update({"split": "all", "users": len(users), "max_history": 5})
    rows = [(user, [f"i{n}" for n in range(k)], [1.0 - n / 10 for n in range(k)], ["i9"]) for user in users]
    return write_store(path, meta, rows, [("i5", 7), ("i6", 3)])


@contextlib.contextmanager
def running_server(path, **options):
    """A server on a free port answering from the store at `path`, in a thread; yields its base URL."""
    server = make_server(path, port=0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def get(url):
    """`(status, JSON body)` of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_http_answers_users_unknown_users_and_bad_requests_in_json(tmp_path):
    small_store(tmp_path / "recs.sqlite", k=3)
    with running_server(tmp_path / "recs.sqlite") as base:
        assert get(f"{base}/recommendations/u1?k=2") == (
            200,
            {"user": "u1", "items": ["i0", "i1"], "scores": [1.0, 0.9], "fallback": False},
        )
        assert get(f"{base}/recommendations/some%20one") == (
            200,
            {"user": "some one", "items": ["i5", "i6"], "scores": None, "fallback": True},
        )
        for query, message in [("k=abc", "k must be an integer >= 1, got 'abc'"), ("k=0", "got '0'")]:
            status, body = get(f"{base}/recommendations/u1?{query}")
            assert status == 400 and message in body["error"]
        status, body = get(f"{base}/users/u1")
        assert status == 404 and "/recommendations/<user>" in body["error"]


def test_server_serves_a_store_replaced_by_a_new_precache(tmp_path):
    path = tmp_path / "recs.sqlite"
    small_store(path, k=3)
    with running_server(path) as base:
        assert len(get(f"{base}/recommendations/u1")[1]["items"]) == 3
        small_store(path, k=4, users=("u1", "u3"))
        assert get(f"{base}/recommendations/u1")[1]["items"] == ["i0", "i1", "i2", "i3"]
        assert get(f"{base}/recommendations/u2")[1]["fallback"] is True
        assert get(f"{base}/recommendations/u3")[1]["fallback"] is False


def test_store_errors_answer_500_in_json_and_are_logged(tmp_path, caplog):
    path = tmp_path / "recs.sqlite"
    small_store(path)
    with running_server(path) as base, caplog.at_level(logging.ERROR, logger="recbole_prorec.serve.http"):
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE recommendations SET items = '[broken' WHERE user = 'u2'")
        status, body = get(f"{base}/recommendations/u2")
        assert status == 500 and "the row of user 'u2' is not" in body["error"]
        assert get(f"{base}/recommendations/u1")[0] == 200
        with sqlite3.connect(path) as connection:
            connection.execute("DROP TABLE recommendations")
        status, body = get(f"{base}/recommendations/u1")
        assert status == 500 and "recs.sqlite" in body["error"]
    assert [record.levelname for record in caplog.records].count("ERROR") == 2
    assert "u2" in caplog.records[0].getMessage()


def test_each_sqlite_connection_stays_in_the_thread_that_opened_it(tmp_path, monkeypatch):
    """sqlite3's own check (`check_same_thread=True`) turns any connection shared across threads into an error."""
    original = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: original(*a, **{**kw, "check_same_thread": True}))
    small_store(tmp_path / "recs.sqlite")
    with running_server(tmp_path / "recs.sqlite") as base:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(get, [f"{base}/recommendations/u{n % 3}?k=2" for n in range(60)]))
    assert all(status == 200 for status, _ in answers)
    assert [body["fallback"] for _, body in answers[:3]] == [True, False, False]


def test_a_client_that_sends_nothing_is_dropped_after_the_timeout(tmp_path):
    small_store(tmp_path / "recs.sqlite")
    with running_server(tmp_path / "recs.sqlite", timeout=0.5) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET /recommendations/u1 HTTP/1.1\r\n")  # and never the end of the headers
            start = time.monotonic()
            assert client.recv(1024) == b""
            assert time.monotonic() - start < 5
        assert get(f"{base}/recommendations/u1")[0] == 200
