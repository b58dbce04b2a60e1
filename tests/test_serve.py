"""Serving: pre-computed top-K equal to the model's own, atomic replace, refresh, fallback, Ray, bad input, crashes.

The crashes are real: a precache or refresh in a subprocess, paused while it writes rows, killed with SIGKILL.
The HTTP server's own tests are in test_serve_http.py.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from conftest import write_tiny_dataset
from recbole.data.interaction import Interaction

from recbole_prorec.quick_start import run
from recbole_prorec.serve import StoreError, open_store
from recbole_prorec.serve import precache as precache_module
from recbole_prorec.serve.__main__ import main as serve_main
from recbole_prorec.serve.precache import PrecacheError, load_recommender, precache, refresh, user_histories
from recbole_prorec.serve.store import write_store

NEW_INTERACTIONS = (
    "user_id:token\titem_id:token\ttimestamp:float\nu3\ti7\t100\nu3\ti2\t99\nu5\tunknown-item\t1\n"
    "u9\ti4\t50\nnewcomer\ti1\t1\n"
)

# Runs a precache or refresh whose `store_rows` pauses before row `pause_at` (a marker file says so): the moment to
# kill it. A refresh pauses late in a transaction larger than SQLite's page cache: the point at which an in-place
# update has already written pages into the store and left a hot journal readers cannot roll back.
PAUSING_WRITER = r"""
import sys, time
from recbole_prorec.serve import precache as p
marker, pause_at, command, checkpoint, store, argument = sys.argv[1:]
original = p.store_rows
def pausing(*args):
    for number, row in enumerate(original(*args)):
        if number == int(pause_at):
            open(marker, "w").close()
            time.sleep(600)
        yield row
p.store_rows = pausing
if command == "refresh":
    p.refresh(checkpoint, store, argument)
else:
    p.precache(checkpoint, store, k=int(argument))
"""


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


def model_top_k_of_histories(checkpoint, histories, k):
    """The model's ranking after each `{user token: [item tokens]}` history (what refresh must store)."""
    _, model, _, test_dataset = load_recommender(checkpoint)
    ids = test_dataset.field2token_id[test_dataset.iid_field]
    user_ids = test_dataset.field2token_id[test_dataset.uid_field]
    length = model.max_seq_length
    item_seq = torch.zeros(len(histories), length, dtype=torch.long)
    for row, items in enumerate(histories.values()):
        item_seq[row, : len(items)] = torch.tensor([ids[item] for item in items])
    users = torch.tensor([user_ids.get(user, 0) for user in histories])
    lengths = torch.tensor([len(items) for items in histories.values()])
    with torch.no_grad():
        scores = model.full_sort_predict(
            Interaction({model.USER_ID: users, model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: lengths})
        )
    scores[:, 0] = -torch.inf
    tokens = test_dataset.field2id_token[test_dataset.iid_field]
    return {user: [str(t) for t in tokens[row.numpy()]] for user, row in zip(histories, scores.topk(k).indices)}


def many_new_users(count=40_000):
    """An .inter file body: the usual new interactions, then `count` newcomers with one known item each."""
    return NEW_INTERACTIONS + "".join(f"new{n}\ti{n % 30}\t1\n" for n in range(count))


def start_paused_writer(tmp_path, command, checkpoint, store, argument, pause_at=2):
    """A subprocess running `command` that has written `pause_at` rows and now sleeps; returns it."""
    marker = tmp_path / f"paused-{command}"
    marker.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PAUSING_WRITER,
            str(marker),
            str(pause_at),
            command,
            str(checkpoint),
            str(store),
            str(argument),
        ],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"{command} ended before pausing: {process.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, f"{command} did not reach its pause in 300 s"
        time.sleep(0.1)
    return process


def kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()


def small_store(path, k=3, users=("u1", "u2")):
    meta = {"model": "M", "dataset": "d", "checkpoint": "c.pth", "checkpoint_sha256": "0" * 64, "k": k}
    meta.update({"split": "all", "users": len(users), "max_history": 5})
    rows = [(user, [f"i{n}" for n in range(k)], [1.0 - n / 10 for n in range(k)], ["i9"]) for user in users]
    return write_store(path, meta, rows, [("i5", 7), ("i6", 3)])


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


def test_unknown_user_fallback_holds_k_items_when_k_exceeds_100(fast_run_config, tmp_path):
    write_tiny_dataset(fast_run_config["data_path"], name="wide", n_items=150)
    checkpoint = run("SASRec", "wide", config_dict=fast_run_config)["saved_model_file"]
    precache(checkpoint, tmp_path / "recs.sqlite", k=120)
    store = open_store(tmp_path / "recs.sqlite")
    answer = store.top_k("nobody")
    assert answer.fallback and len(answer.items) == 120 == len(set(answer.items))


def test_killed_precache_leaves_the_store_and_no_temporary_file_after_the_next_run(checkpoint, tmp_path):
    path = tmp_path / "recs.sqlite"
    precache(checkpoint, path, k=5)
    before = path.read_bytes()
    kill(start_paused_writer(tmp_path, "precache", checkpoint, path, 7))
    assert path.read_bytes() == before and open_store(path).meta["k"] == 5
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]  # the killed run's file, until the next run
    precache(checkpoint, path, k=7)
    assert open_store(path).meta["k"] == 7
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_refresh_killed_by_sigkill_leaves_lookup_and_a_running_server_working(checkpoint, tmp_path, capsys):
    from test_serve_http import get, running_server

    path = tmp_path / "recs.sqlite"
    precache(checkpoint, path, k=5)
    before = open_store(path).top_k("u3")
    new = tmp_path / "new.inter"
    new.write_text(many_new_users())
    with running_server(path) as base:
        assert get(f"{base}/recommendations/u3")[1]["items"] == before.items
        kill(start_paused_writer(tmp_path, "refresh", checkpoint, path, new, pause_at=39_990))
        assert open_store(path).top_k("u3") == before
        assert serve_main(["lookup", "--store", str(path), "u3"]) == 0
        assert json.loads(capsys.readouterr().out)["items"] == before.items
        assert get(f"{base}/recommendations/u3") == (200, before._asdict())
        assert refresh(checkpoint, path, new)["users"] == 3 + 40_000  # the killed run left no lock, applied nothing
        status, body = get(f"{base}/recommendations/u3")
        assert status == 200 and body["items"] == open_store(path).top_k("u3").items
        assert get(f"{base}/recommendations/new7")[1]["fallback"] is False
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_refresh_and_precache_refuse_a_store_another_writer_is_writing(checkpoint, tmp_path):
    path = tmp_path / "recs.sqlite"
    precache(checkpoint, path, k=5)
    new = tmp_path / "new.inter"
    new.write_text(NEW_INTERACTIONS)
    other = tmp_path / "other.inter"
    other.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti3\t100\n")
    writer = start_paused_writer(tmp_path, "refresh", checkpoint, path, new)
    try:
        with pytest.raises(
            StoreError, match=rf"recs.sqlite is being written by another precache or refresh \(process {writer.pid}"
        ):
            refresh(checkpoint, path, other)
        with pytest.raises(StoreError, match="being written by another precache or refresh"):
            precache(checkpoint, path, k=5)
    finally:
        kill(writer)
    assert refresh(checkpoint, path, other)["users"] == 1


def test_refresh_recomputes_only_the_users_with_new_interactions_as_the_model_ranks_them(checkpoint, tmp_path):
    path = tmp_path / "recs.sqlite"
    precache(checkpoint, path, k=5)
    store = open_store(path)
    before = {user: (store.top_k(user), store.history(user)) for user in store.users()}
    store.close()
    new = tmp_path / "new.inter"
    new.write_text(NEW_INTERACTIONS)
    assert refresh(checkpoint, path, new) == {"users": 3, "skipped_items": 1}
    store = open_store(path)
    assert store.history("u3") == (before["u3"][1] + ["i2", "i7"])[-20:]  # in time order
    assert store.history("u9")[-1] == "i4" and store.history("newcomer") == ["i1"]
    assert not store.top_k("newcomer").fallback
    changed = {"u3", "u9", "newcomer"}
    expected = model_top_k_of_histories(checkpoint, {user: store.history(user) for user in changed}, k=5)
    assert {user: store.top_k(user).items for user in changed} == expected
    assert expected["u3"] != before["u3"][0].items or expected["u9"] != before["u9"][0].items
    for user, (answer, history) in before.items():
        if user not in changed:
            assert store.top_k(user) == answer and store.history(user) == history
    assert store.history("u5") == before["u5"][1]  # only an unknown item: untouched


def test_refresh_applies_a_file_once_and_records_it_in_the_store(checkpoint, tmp_path):
    path = tmp_path / "recs.sqlite"
    precache(checkpoint, path, k=5)
    new = tmp_path / "new.inter"
    new.write_text(NEW_INTERACTIONS)
    refresh(checkpoint, path, new)
    history = open_store(path).history("u3")
    copy = tmp_path / "same-content.inter"
    copy.write_text(NEW_INTERACTIONS)
    with pytest.raises(StoreError, match=r"same-content.inter: already applied to .*recs.sqlite .*new.inter"):
        refresh(checkpoint, path, copy)
    assert open_store(path).history("u3") == history


def test_store_meta_records_provenance_and_refresh_updates_it(checkpoint, tmp_path):
    from recbole_prorec.utils import data_fingerprint

    path = tmp_path / "recs.sqlite"
    config, *_ = load_recommender(checkpoint)
    meta = precache(checkpoint, path, k=5, overrides={"eval_batch_size": 32})
    assert meta["data_sha256"] == data_fingerprint(config) and meta["overrides"] == {"eval_batch_size": 32}
    assert open_store(path).meta["data_sha256"] == meta["data_sha256"]
    new = tmp_path / "new.inter"
    new.write_text(NEW_INTERACTIONS)
    refresh(checkpoint, path, new)
    store = open_store(path)
    assert store.meta["users"] == len(store.users()) == 41 and store.meta["refreshes"] == 1


def test_refresh_refuses_data_files_changed_since_the_store_was_computed(checkpoint, tmp_path, monkeypatch):
    path = tmp_path / "recs.sqlite"
    precache(checkpoint, path, k=5)
    before = path.read_bytes()
    new = tmp_path / "new.inter"
    new.write_text(NEW_INTERACTIONS)
    monkeypatch.setattr(precache_module, "data_fingerprint", lambda config: "f" * 64)  # the files as they are now
    with pytest.raises(StoreError, match=r"recs.sqlite: the data files of tiny in .* changed since the store"):
        refresh(checkpoint, path, new)
    assert path.read_bytes() == before


def test_refresh_refuses_a_test_split_store(checkpoint, tmp_path):
    path = tmp_path / "recs.sqlite"
    precache(checkpoint, path, k=5, split="test")
    before = path.read_bytes()
    new = tmp_path / "new.inter"
    new.write_text(NEW_INTERACTIONS)
    with pytest.raises(StoreError, match=r"recs.sqlite: a split=test store .* --split all"):
        refresh(checkpoint, path, new)
    assert path.read_bytes() == before


def test_ray_workers_give_the_same_store_as_one_process(checkpoint, tmp_path):
    precache(checkpoint, tmp_path / "one.sqlite", k=5)
    meta = precache(checkpoint, tmp_path / "ray.sqlite", k=5, workers=2)
    one, sharded = open_store(tmp_path / "one.sqlite"), open_store(tmp_path / "ray.sqlite")
    assert meta["shards"] == 2 and one.users() == sharded.users()
    assert all(one.top_k(user) == sharded.top_k(user) for user in one.users())


def test_ray_cluster_shards_over_its_cpus_and_its_workers_check_the_checkpoint(checkpoint, tmp_path, monkeypatch):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        meta = precache(checkpoint, tmp_path / "ray.sqlite", k=5, address="auto")
        original = precache_module.provenance
        monkeypatch.setattr(  # as if the workers' nodes held another file than the driver's
            precache_module, "provenance", lambda *a: {**original(*a), "checkpoint_sha256": "0" * 64}
        )
        with pytest.raises(PrecacheError, match=r"^\S+\.pth: sha256 \w+… on worker .* the driver ranks with"):
            precache(checkpoint, tmp_path / "other.sqlite", k=5, address="auto")
    finally:
        ray.shutdown()
    precache(checkpoint, tmp_path / "one.sqlite", k=5)
    one, sharded = open_store(tmp_path / "one.sqlite"), open_store(tmp_path / "ray.sqlite")
    assert meta["shards"] == 2 and all(one.top_k(user) == sharded.top_k(user) for user in one.users())


def test_a_worker_refuses_a_checkpoint_or_data_other_than_the_drivers(checkpoint):
    config, model, _, test_dataset = load_recommender(checkpoint)
    users, item_seq, lengths = user_histories(model, test_dataset, "all")
    expected = precache_module.provenance(checkpoint, config)
    items, _ = precache_module.score_shard(checkpoint, users, item_seq, lengths, 5, 64, None, expected)
    assert items.shape == (40, 5)
    with pytest.raises(PrecacheError, match=r"\.pth: sha256 .* the driver ranks with"):
        precache_module.score_shard(
            checkpoint, users, item_seq, lengths, 5, 64, None, {**expected, "checkpoint_sha256": "0" * 64}
        )
    with pytest.raises(PrecacheError, match=r"data files .* differ from the driver's"):
        precache_module.score_shard(checkpoint, users, item_seq, lengths, 5, 64, None, {**expected, "data_sha256": "0"})


def test_bad_inputs_are_one_line_errors_and_write_nothing(checkpoint, tmp_path):
    store = tmp_path / "recs.sqlite"
    with pytest.raises(PrecacheError, match="no such checkpoint file"):
        precache(tmp_path / "missing.pth", store)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(PrecacheError, match="junk.pth: not a RecBole checkpoint"):
        precache(tmp_path / "junk.pth", store)
    with pytest.raises(PrecacheError, match=r"k \(500\) is larger than the number of items \(30\)"):
        precache(checkpoint, store, k=500)
    with pytest.raises(PrecacheError, match=r"k must be an integer >= 1, got 0"):
        precache(checkpoint, store, k=0)
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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lookup", "--store", "{store}", "u1", "--k", "0"], "argument --k: must be an integer >= 1, got '0'"),
        (["precache", "--checkpoint", "{checkpoint}", "--store", "{store}", "--k", "-1"], "argument --k: must be"),
        (["precache", "--checkpoint", "{checkpoint}", "--store", "{store}", "--k", "0"], "argument --k: must be"),
        (["precache", "--checkpoint", "{checkpoint}", "--store", "{store}", "--batch_size", "0"], "--batch_size: must"),
        (["precache", "--checkpoint", "{checkpoint}", "--store", "{store}", "--workers", "-2"], "--workers: must"),
        (["serve", "--store", "{store}", "--timeout", "0"], "argument --timeout: must be a number > 0"),
    ],
)
def test_cli_numbers_out_of_range_are_one_line_argparse_errors(checkpoint, tmp_path, capsys, argv, message):
    store = tmp_path / "recs.sqlite"
    precache(checkpoint, store, k=5)
    before = store.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        serve_main([arg.format(store=store, checkpoint=checkpoint) for arg in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err.splitlines()[-1] and "Traceback" not in err
    assert store.read_bytes() == before


def test_a_store_path_with_uri_characters_opens_that_file(tmp_path):
    path = tmp_path / "a?b#c%41 d.sqlite"
    small_store(path, k=4)
    store = open_store(path)
    assert store.meta["k"] == 4 and store.top_k("u1").items == ["i0", "i1", "i2", "i3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a?b#c%41 d.sqlite"]


def test_stores_are_created_with_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        small_store(tmp_path / "recs.sqlite")
    finally:
        os.umask(old)
    assert (tmp_path / "recs.sqlite").stat().st_mode & 0o777 == 0o644
    os.chmod(tmp_path / "recs.sqlite", 0o640)  # an operator's choice survives the next write
    small_store(tmp_path / "recs.sqlite")
    assert (tmp_path / "recs.sqlite").stat().st_mode & 0o777 == 0o640


def test_a_store_replaced_on_disk_is_noticed_by_an_open_reader(tmp_path):
    path = tmp_path / "recs.sqlite"
    small_store(path, k=3)
    store = open_store(path)
    assert not store.replaced()
    small_store(path, k=4)
    assert store.replaced() and store.top_k("u1").items == ["i0", "i1", "i2"]  # still the file it opened
    assert not open_store(path).replaced() and open_store(path).meta["k"] == 4


def test_a_corrupt_row_is_a_store_error_naming_the_file_and_user(tmp_path):
    path = tmp_path / "recs.sqlite"
    small_store(path)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE recommendations SET items = '[broken' WHERE user = 'u2'")
    with pytest.raises(StoreError, match=r"recs.sqlite: the row of user 'u2' is not .*JSON"):
        open_store(path).top_k("u2")
