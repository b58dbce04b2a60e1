"""Serving: pre-computed top-K equal to the model's own, atomic replace, refresh, fallback, Ray, bad input, HTTP."""

import json
import sqlite3
import threading
import urllib.request

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_prorec.quick_start import run
from recbole_prorec.serve import StoreError, open_store
from recbole_prorec.serve import precache as precache_module
from recbole_prorec.serve.__main__ import main as serve_main
from recbole_prorec.serve.http import make_server
from recbole_prorec.serve.precache import PrecacheError, load_recommender, precache, refresh, user_histories


@pytest.fixture
def checkpoint(fast_run_config):
    return run("SASRec", "tiny", config_dict={**fast_run_config, "epochs": 2})["saved_model_file"]


def model_top_k(checkpoint, users, item_seq, lengths, k):
    """The model's own ranking, as item tokens per user token."""
    _, model, _, test_dataset = load_recommender(checkpoint)
    with torch.no_grad():
        scores = model.full_sort_predict(
            Interaction({model.USER_ID: users, model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: lengths})
        )
    scores[:, 0] = -torch.inf
    tokens = test_dataset.field2id_token[test_dataset.iid_field]
    user_tokens = test_dataset.field2id_token[test_dataset.uid_field]
    return {str(user_tokens[u]): [str(t) for t in tokens[row.numpy()]] for u, row in zip(users, scores.topk(k).indices)}


@pytest.mark.parametrize("split", ["test", "all"])
def test_store_holds_the_model_top_k_of_every_user_by_token(checkpoint, tmp_path, split):
    meta = precache(checkpoint, tmp_path / "recs.sqlite", k=5, split=split)
    _, model, _, test_dataset = load_recommender(checkpoint)
    expected = model_top_k(checkpoint, *user_histories(model, test_dataset, split), k=5)
    store = open_store(tmp_path / "recs.sqlite")
    assert meta["users"] == len(expected) == 40 and store.meta["model"] == "SASRec" and store.meta["k"] == 5
    for user, items in expected.items():
        answer = store.top_k(user)
        assert answer.items == items and not answer.fallback and answer.scores == sorted(answer.scores, reverse=True)
    assert store.top_k(next(iter(expected)), 2).items == next(iter(expected.values()))[:2]


def test_whole_history_view_ends_with_the_test_item(checkpoint):
    _, model, _, test_dataset = load_recommender(checkpoint)
    _, test_seq, test_len = user_histories(model, test_dataset, "test")
    _, seq, length = user_histories(model, test_dataset, "all")
    last = test_dataset.inter_feat[model.ITEM_ID]
    assert torch.equal(seq[torch.arange(len(seq)), length - 1], last)
    short = test_len < test_seq.shape[1]
    assert torch.equal(length[short], test_len[short] + 1)
    assert torch.equal(
        seq[short].gather(1, (test_len[short] - 1).unsqueeze(1)),
        test_seq[short].gather(1, (test_len[short] - 1).unsqueeze(1)),
    )


def test_unknown_user_gets_the_most_popular_items_flagged(checkpoint, tmp_path):
    precache(checkpoint, tmp_path / "recs.sqlite", k=5)
    store = open_store(tmp_path / "recs.sqlite")
    answer = store.top_k("nobody", 3)
    assert answer.fallback and answer.scores is None and answer.items == store.popular[:3]
    assert len(store.popular) > 3


def test_a_crash_mid_way_leaves_the_previous_store_unchanged(checkpoint, tmp_path, monkeypatch):
    path = tmp_path / "recs.sqlite"
    precache(checkpoint, path, k=5)
    before = path.read_bytes()

    def failing_rows(*args):
        yield from list(original(*args))[:3]
        raise KeyboardInterrupt("killed")

    original = precache_module.store_rows
    monkeypatch.setattr(precache_module, "store_rows", failing_rows)
    with pytest.raises(KeyboardInterrupt):
        precache(checkpoint, path, k=7)
    assert path.read_bytes() == before and open_store(path).meta["k"] == 5
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_refresh_recomputes_only_the_users_with_new_interactions(checkpoint, tmp_path):
    path = tmp_path / "recs.sqlite"
    precache(checkpoint, path, k=5)
    store = open_store(path)
    before = {user: (store.top_k(user), store.history(user)) for user in store.users()}
    store.close()
    new = tmp_path / "new.inter"
    new.write_text(
        "user_id:token\titem_id:token\ttimestamp:float\nu3\ti7\t100\nu3\ti2\t99\nu5\tunknown-item\t1\n"
        "u9\ti4\t50\nnewcomer\ti1\t1\n"
    )
    assert refresh(checkpoint, path, new) == {"users": 3, "skipped_items": 1}
    store = open_store(path)
    assert store.history("u3") == (before["u3"][1] + ["i2", "i7"])[-20:]  # in time order
    assert store.history("u9")[-1] == "i4" and store.history("newcomer") == ["i1"]
    assert not store.top_k("newcomer").fallback
    changed = {"u3", "u9"}
    for user, (answer, history) in before.items():
        if user not in changed:
            assert store.top_k(user) == answer and store.history(user) == history
    assert store.history("u5") == before["u5"][1]  # only an unknown item: untouched


def test_ray_workers_give_the_same_store_as_one_process(checkpoint, tmp_path):
    precache(checkpoint, tmp_path / "one.sqlite", k=5)
    precache(checkpoint, tmp_path / "ray.sqlite", k=5, workers=2)
    one, sharded = open_store(tmp_path / "one.sqlite"), open_store(tmp_path / "ray.sqlite")
    assert one.users() == sharded.users()
    assert all(one.top_k(user) == sharded.top_k(user) for user in one.users())


def test_bad_inputs_are_one_line_errors_and_write_nothing(checkpoint, tmp_path):
    store = tmp_path / "recs.sqlite"
    with pytest.raises(PrecacheError, match="no such checkpoint file"):
        precache(tmp_path / "missing.pth", store)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(PrecacheError, match="junk.pth: not a RecBole checkpoint"):
        precache(tmp_path / "junk.pth", store)
    with pytest.raises(PrecacheError, match=r"k \(500\) is larger than the number of items \(30\)"):
        precache(checkpoint, store, k=500)
    assert not store.exists()
    (tmp_path / "corrupt.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(StoreError, match="corrupt.sqlite: not a recommendation store"):
        open_store(tmp_path / "corrupt.sqlite")
    precache(checkpoint, store, k=5)
    bad = tmp_path / "bad.inter"
    bad.write_text("user:token\titem:token\nu1\ti1\n")
    with pytest.raises(PrecacheError, match=r"bad.inter, line 1: header .* lacks \['user_id', 'item_id'\]"):
        refresh(checkpoint, store, bad)
    with sqlite3.connect(store) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="store schema version 99"):
        open_store(store)


def test_lookup_cli_and_http_endpoint_answer_json(checkpoint, tmp_path, capsys):
    store = tmp_path / "recs.sqlite"
    precache(checkpoint, store, k=5)
    assert serve_main(["lookup", "--store", str(store), "u1", "--k", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["items"] == open_store(store).top_k("u1", 2).items and printed["fallback"] is False
    assert serve_main(["lookup", "--store", str(tmp_path / "none.sqlite"), "u1"]) == 2

    server = make_server(store, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/recommendations/u1?k=3"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["items"] == open_store(store).top_k("u1", 3).items
    finally:
        server.shutdown()
        server.server_close()
