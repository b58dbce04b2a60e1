"""Pre-compute every user's top-K from a trained RecBole checkpoint (ours or a built-in model) into a store.

A generative recommender costs milliseconds of beam search per request, so Semantic Convergence serves it by
computing every user's top-K ahead of time; any sequential model here can be served the same way.

The view of a user (`split`): `all` (default) is what a live service has after the user's last interaction: the
last `MAX_ITEM_LIST_LENGTH` items of the whole sequence, the test item included; `test` is the evaluation's view
(the history before the test item), which reproduces the model's test ranking. Ids in the store are the
dataset's tokens, not RecBole's internal ids.
"""

import csv
import datetime
import hashlib
import json
import logging
import operator
import pathlib
import socket
import time

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from tqdm import tqdm

from recbole_prorec.serve.store import StoreError, store_lock, update_store, write_store
from recbole_prorec.serve.store import positive_int as store_positive_int
from recbole_prorec.utils import data_fingerprint

logger = logging.getLogger(__name__)
SPLITS = ("all", "test")
POPULAR_MIN = 100  # the unknown-user answer holds max(k, POPULAR_MIN) items, so any k up to the store's is served


class PrecacheError(ValueError):
    """A checkpoint, option or input file that pre-computation cannot use."""


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def positive_int(name, value):
    """`value` as an int >= 1, or a `PrecacheError` naming the option."""
    return store_positive_int(name, value, PrecacheError)


def provenance(checkpoint, config):
    """What a store was computed from: the checkpoint's sha256 and the dataset files' (`utils.data_fingerprint`).

    Recorded in the store's meta and checked by refresh and by every Ray worker, which loads its own copy.
    """
    return {"checkpoint_sha256": file_sha256(checkpoint), "data_sha256": data_fingerprint(config)}


def load_recommender(checkpoint, overrides=None):
    """`(config, model, dataset, test_dataset)` from a RecBole checkpoint, or a `PrecacheError` naming the file."""
    from recbole_prorec.evaluate import CheckpointError, load_data_and_model

    path = pathlib.Path(checkpoint)
    try:
        config, model, dataset, (_, _, test_data) = load_data_and_model(path, overrides)
    except CheckpointError as error:
        raise PrecacheError(str(error)) from None
    except (RuntimeError, KeyError, TypeError) as error:  # weights or config that do not fit the model
        raise PrecacheError(f"{path}: not a RecBole checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(model, SequentialRecommender):
        raise PrecacheError(f"{path}: a {config['model']} checkpoint; pre-computation serves sequential recommenders")
    return config, model, dataset, test_data.dataset


def user_histories(model, test_dataset, split="all"):
    """`(users [U], item_seq [U, T], item_seq_len [U])` in internal ids, one row per user, in `split`'s view."""
    if split not in SPLITS:
        raise PrecacheError(f"split must be one of {SPLITS}, got {split!r}")
    data = test_dataset.inter_feat
    users, item_seq = data[model.USER_ID].clone(), data[model.ITEM_SEQ].clone()
    lengths = data[model.ITEM_SEQ_LEN].clone()
    if split == "test":
        return users, item_seq, lengths
    last_items = data[model.ITEM_ID]  # the test item: the user's most recent interaction
    full = lengths == item_seq.shape[1]
    item_seq[full] = torch.roll(item_seq[full], -1, dims=1)  # drop the oldest item of full windows
    positions = torch.where(full, lengths - 1, lengths)
    item_seq[torch.arange(len(users)), positions] = last_items
    return users, item_seq, torch.clamp(lengths + 1, max=item_seq.shape[1])


@torch.no_grad()
def top_k(model, users, item_seq, lengths, k, batch_size=1024, progress=True):
    """`(items [U, k], scores [U, k])` internal ids and scores, best first; beam positions that found no item
    (score -inf, when k exceeds a generative model's `beam_size`) have item 0."""
    model.eval()
    item_parts, score_parts = [], []
    for start in tqdm(range(0, len(users), batch_size), desc="top-K", unit=" batches", disable=not progress):
        rows = slice(start, start + batch_size)
        interaction = Interaction(
            {model.USER_ID: users[rows], model.ITEM_SEQ: item_seq[rows], model.ITEM_SEQ_LEN: lengths[rows]}
        )
        scores = model.full_sort_predict(interaction).float()  # [b, n_items]
        scores[:, 0] = -torch.inf  # the padding item
        values, items = scores.topk(k, dim=1)
        item_parts.append(items.masked_fill(torch.isinf(values), 0))
        score_parts.append(values)
    return torch.cat(item_parts), torch.cat(score_parts)


def store_rows(user_tokens, items, scores, histories, item_tokens):
    """Store rows `(user, item tokens, scores, history tokens)`; beam positions that found no item are dropped."""
    for user, ranked, values, history in zip(user_tokens, items, scores, histories):
        found = ranked > 0
        yield (
            user,
            [str(t) for t in item_tokens[ranked[found].numpy()]],
            [round(float(s), 6) for s in values[found]],
            history,
        )


def popular_items(dataset, count=100):
    """The `count` items most often interacted with, `[(token, interactions)]` (the unknown-user answer).

    Counted over the sequential samples' targets: every interaction but each user's first.
    """
    counts = torch.bincount(dataset.inter_feat[dataset.iid_field], minlength=dataset.item_num)
    counts[0] = 0
    values, ids = counts.topk(min(count, dataset.item_num - 1))
    tokens = dataset.field2id_token[dataset.iid_field]
    return [(str(tokens[i]), int(v)) for i, v in zip(ids.tolist(), values.tolist())]


def score_shard(checkpoint, users, item_seq, lengths, k, batch_size, overrides=None, expected=None):
    """Load the checkpoint and rank one shard of users: the unit of work of one Ray worker.

    A worker reads the checkpoint and the dataset from its own node's files, which need not be the driver's:
    `expected` (the driver's `provenance`) makes it refuse a checkpoint or data files that differ.
    """
    host = socket.gethostname()
    if expected and pathlib.Path(checkpoint).is_file():
        digest = file_sha256(checkpoint)
        if digest != expected["checkpoint_sha256"]:
            raise PrecacheError(
                f"{checkpoint}: sha256 {digest[:12]}… on worker {host}, not that of the checkpoint the driver ranks "
                f"with ({expected['checkpoint_sha256'][:12]}…): give every node the same file"
            )
    config, model, _, _ = load_recommender(checkpoint, overrides)
    if expected and data_fingerprint(config) != expected["data_sha256"]:
        raise PrecacheError(
            f"{config['data_path']}: the data files of {config['dataset']} on worker {host} differ from the "
            "driver's: give every node the same dataset files"
        )
    return top_k(model, users, item_seq, lengths, k, batch_size, progress=False)


def ray_top_k(
    checkpoint, users, item_seq, lengths, k, batch_size, workers, address=None, overrides=None, expected=None
):
    """`(items, scores, shards)`: `top_k` with users sharded over Ray tasks, each loading the checkpoint once.

    `workers` shards (and, without `address`, a local Ray with that many CPUs); 0 with `address`: one shard per
    CPU of the cluster.
    """
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        shards_wanted = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1)(score_shard)
        shards = [s for s in np.array_split(np.arange(len(users)), shards_wanted) if len(s)]
        futures = [
            remote.remote(str(checkpoint), users[s], item_seq[s], lengths[s], k, batch_size, overrides, expected)
            for s in shards
        ]
        try:
            results = ray.get(futures)
        except ray.exceptions.RayTaskError as error:
            if isinstance(getattr(error, "cause", None), PrecacheError):
                raise PrecacheError(str(error.cause)) from None
            raise
    finally:
        if started_here:
            ray.shutdown()
    return torch.cat([items for items, _ in results]), torch.cat([scores for _, scores in results]), len(shards)


def precache(checkpoint, store, k=50, split="all", batch_size=1024, workers=0, address=None, overrides=None):
    """Compute every user's top-`k` from `checkpoint` and write `store` atomically; returns the store's meta.

    `workers > 0` (a local Ray with that many CPUs) or `address` (an existing Ray cluster; one shard per CPU unless
    `workers` says otherwise) shards users over Ray workers; the driver writes the store. The result equals a
    one-process run. Refuses a store another precache or refresh is writing.
    """
    from recbole_prorec import __version__

    k, batch_size = positive_int("k", k), positive_int("batch_size", batch_size)
    if operator.index(workers) < 0:
        raise PrecacheError(f"workers must be >= 0, got {workers}")
    config, model, dataset, test_dataset = load_recommender(checkpoint, overrides)
    users, item_seq, lengths = user_histories(model, test_dataset, split)
    if k > model.n_items - 1:
        raise PrecacheError(f"k ({k}) is larger than the number of items ({model.n_items - 1})")
    with store_lock(store):
        origin = provenance(checkpoint, config)
        start = time.perf_counter()
        shards = 1
        if workers or address:
            items, scores, shards = ray_top_k(
                checkpoint, users, item_seq, lengths, k, batch_size, workers, address, overrides, origin
            )
        else:
            items, scores = top_k(model, users, item_seq, lengths, k, batch_size)
        seconds = time.perf_counter() - start
        meta = {
            "model": config["model"],
            "dataset": config["dataset"],
            "checkpoint": str(checkpoint),
            **origin,
            "overrides": json.loads(json.dumps(overrides or {}, default=str)),
            "k": k,
            "split": split,
            "users": len(users),
            "max_history": int(item_seq.shape[1]),
            "seconds": round(seconds, 3),
            "shards": shards,
            "refreshes": 0,
            "project_version": __version__,
            "created": now(),
        }
        item_tokens = test_dataset.field2id_token[test_dataset.iid_field]
        user_tokens = (str(t) for t in test_dataset.field2id_token[test_dataset.uid_field][users.numpy()])
        histories = ([str(t) for t in item_tokens[seq[:n].numpy()]] for seq, n in zip(item_seq, lengths))
        rows = store_rows(user_tokens, items, scores, histories, item_tokens)
        write_store(store, meta, rows, popular_items(dataset, max(k, POPULAR_MIN)))
    logger.info(f"pre-computed the top-{k} of {len(users)} users in {seconds:.1f} s into {store}")
    return meta


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_new_interactions(path, user_field, item_field, time_field):
    """`{user token: [item tokens in time order]}` from an atomic `.inter` file (tab-separated, typed header)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PrecacheError(f"{path}: no such interactions file")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = [name.split(":")[0] for name in next(reader, [])]
        missing = [field for field in (user_field, item_field) if field not in header]
        if missing:
            raise PrecacheError(
                f"{path}, line 1: header {header} lacks {missing} (an atomic .inter header, e.g. "
                f"'{user_field}:token<TAB>{item_field}:token<TAB>{time_field}:float')"
            )
        columns = {name: header.index(name) for name in (user_field, item_field, time_field) if name in header}
        events = []
        for line_no, values in enumerate(reader, 2):
            if not values:
                continue
            if len(values) != len(header):
                raise PrecacheError(f"{path}, line {line_no}: {len(values)} fields, the header has {len(header)}")
            when = 0.0
            if time_field in columns:
                try:
                    when = float(values[columns[time_field]])
                except ValueError:
                    raise PrecacheError(
                        f"{path}, line {line_no}: timestamp {values[columns[time_field]]!r} is not a number"
                    ) from None
            events.append((values[columns[user_field]], when, line_no, values[columns[item_field]]))
    new_items = {}
    for user, _, _, item in sorted(events):
        new_items.setdefault(user, []).append(item)
    return new_items


def refresh(checkpoint, store, interactions, batch_size=1024, overrides=None):
    """Append new interactions to the store's histories and recompute only those users; the store is replaced
    by an updated copy (see `store.py`), so readers are never blocked and a killed refresh changes nothing.

    Items the checkpoint does not know are skipped (counted). Users the store does not know get a row from their
    new interactions alone. Refuses: a checkpoint or data files other than the store's, an `.inter` file whose
    content was already applied, a `split=test` store (its histories stop before each user's test item, so
    appending would silently drop that item), and a store another precache or refresh is writing.
    Returns `{"users": recomputed, "skipped_items": n}`.
    """
    batch_size = positive_int("batch_size", batch_size)
    config, model, _, test_dataset = load_recommender(checkpoint, overrides)
    new_items = read_new_interactions(
        interactions, config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["TIME_FIELD"]
    )
    digest = file_sha256(interactions)
    origin = provenance(checkpoint, config)
    with update_store(store) as target:
        if target.meta["checkpoint_sha256"] != origin["checkpoint_sha256"]:
            raise StoreError(
                f"{store} was computed from {target.meta['checkpoint']} (another sha256 than "
                f"{checkpoint}): refresh it with the checkpoint it was computed from"
            )
        if target.meta.get("data_sha256") != origin["data_sha256"]:
            raise StoreError(
                f"{store}: the data files of {config['dataset']} in {config['data_path']} changed since the store "
                "was computed (the ids refresh maps tokens to would differ): pre-compute it again"
            )
        if target.meta["split"] != "all":
            raise StoreError(
                f"{store}: a split={target.meta['split']} store holds the evaluation's view (each history stops "
                "before the user's test item), and appending new interactions would drop that item: refresh a "
                "store pre-computed with --split all"
            )
        earlier = target.applied(digest)
        if earlier:
            raise StoreError(
                f"{interactions}: already applied to {store} on {earlier[1]} (as {earlier[0]}, same sha256): "
                "each file of interactions is applied once"
            )
        item_ids = test_dataset.field2token_id[test_dataset.iid_field]  # RecBole's token -> internal id tables
        user_ids = test_dataset.field2token_id[test_dataset.uid_field]
        length = target.meta["max_history"]
        users, sequences, skipped = [], [], 0
        for user, items in new_items.items():
            known = [item for item in items if item in item_ids and item_ids[item] > 0]
            skipped += len(items) - len(known)
            if known:
                users.append(user)
                sequences.append((target.history(user) + known)[-length:])
        if users:
            item_seq = torch.zeros(len(users), length, dtype=torch.long)
            for row, sequence in enumerate(sequences):
                item_seq[row, : len(sequence)] = torch.tensor([item_ids[item] for item in sequence])
            lengths = torch.tensor([len(sequence) for sequence in sequences])
            internal_users = torch.tensor([user_ids.get(user, 0) for user in users])
            items, scores = top_k(model, internal_users, item_seq, lengths, target.meta["k"], batch_size, False)
            item_tokens = test_dataset.field2id_token[test_dataset.iid_field]
            target.replace_rows(store_rows(users, items, scores, sequences, item_tokens))
        when = now()
        target.record_refresh(digest, pathlib.Path(interactions).resolve(), when, len(users), skipped)
        target.update_meta(users=target.count_users(), refreshes=target.meta.get("refreshes", 0) + 1, refreshed=when)
    logger.info(f"refreshed {len(users)} users of {store} ({skipped} interactions with unknown items skipped)")
    return {"users": len(users), "skipped_items": skipped}
