"""Serving cost: pre-computing every user's top-K into a store, looking it up, against ranking on the fly.

    python benchmarks/run.py --suite serving        # the suite: one JSONL record per model for report.py

For each model of a `kind: serving` suite (a run of a training suite, named by suite and label; its newest saved
checkpoint is served): `precache` of all users in one process and with `workers` Ray workers (0: none; wall seconds,
model loading included), the store's size, `lookups` random `top_k(user, 10)` lookups (p50 / p99), and the
latency of ranking one user on the fly with the loaded model (`full_sort_predict` + top-K, p50 / p99).
"""

import os
import pathlib
import tempfile
import time

import common
import numpy as np
import torch


def percentiles_ms(seconds):
    values = np.asarray(seconds) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def training_run(suite_name, label, seed):
    """The run labelled `label` (first dataset) of the training suite `suite_name`, as `common.plan` gives it."""
    specs = [s for s in common.plan(common.load_suite(suite_name), seeds=[seed]) if s["label"] == label]
    if not specs:
        raise SystemExit(f"suite {suite_name} has no run labelled {label!r}")
    return specs[0]


def record_key(dataset, label):
    return f"serving-{dataset}-{label}"


def newest_checkpoint(suite_name, label, seed):
    """The newest `saved/*.pth` of the run labelled `label` (first dataset) of `suite_name`."""
    spec = training_run(suite_name, label, seed)
    folder = common.WORK / suite_name / spec["key"] / "saved"
    model = spec["model"]
    checkpoints = sorted(folder.glob(f"{model}-*.pth"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise SystemExit(f"no {model} checkpoint in {folder}: run `benchmarks/run.py --suite {suite_name}` first")
    return checkpoints[-1]


def measure(checkpoint, label, k=50, workers=2, lookups=100_000, single_users=200, seed=0):
    """One serving record for `checkpoint` (see the module docstring)."""
    from recbole.data.interaction import Interaction

    from recbole_prorec.serve import open_store
    from recbole_prorec.serve.precache import load_recommender, precache, user_histories

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="serving-") as scratch:
        store = pathlib.Path(scratch) / "recs.sqlite"
        start = time.perf_counter()
        meta = precache(checkpoint, store, k=k)
        one_process = time.perf_counter() - start
        sharded = None
        if workers:  # 0: one process only
            start = time.perf_counter()
            precache(checkpoint, pathlib.Path(scratch) / "ray.sqlite", k=k, workers=workers)
            sharded = time.perf_counter() - start
        size_mb = store.stat().st_size / 2**20
        reader = open_store(store)
        users = reader.users()
        timings = []
        for user in rng.choice(users, size=lookups):
            begin = time.perf_counter()
            reader.top_k(user, 10)
            timings.append(time.perf_counter() - begin)
        lookup_p50, lookup_p99 = percentiles_ms(timings)

    _, model, _, test_dataset = load_recommender(checkpoint)
    all_users, item_seq, lengths = user_histories(model, test_dataset, "all")
    timings = []
    with torch.no_grad():
        for row in rng.choice(len(all_users), size=single_users):
            rows = slice(int(row), int(row) + 1)
            interaction = Interaction(
                {model.USER_ID: all_users[rows], model.ITEM_SEQ: item_seq[rows], model.ITEM_SEQ_LEN: lengths[rows]}
            )
            begin = time.perf_counter()
            model.full_sort_predict(interaction).topk(10)
            timings.append(time.perf_counter() - begin)
    online_p50, online_p99 = percentiles_ms(timings)
    return {
        "kind": "serving",
        "key": record_key(meta["dataset"], label),
        "label": label,
        "model": meta["model"],
        "dataset": meta["dataset"],
        "users": meta["users"],
        "k": k,
        "precache_seconds": one_process,
        "precache_ranking_seconds": meta["seconds"],
        "ray_workers": workers,
        "ray_precache_seconds": sharded,
        "store_mb": size_mb,
        "lookups": lookups,
        "lookup_p50_ms": lookup_p50,
        "lookup_p99_ms": lookup_p99,
        "online_users": single_users,
        "online_p50_ms": online_p50,
        "online_p99_ms": online_p99,
        "load_average": os.getloadavg()[0],
    }


def run_suite(suite_name, suite, results_file):
    """Measure every model of a `kind: serving` suite not yet in `results_file` (one JSON line each).

    A model already recorded is skipped before anything is measured: a measurement takes minutes per model.
    """
    import json

    done = common.finished_keys(results_file)
    commit = common.git_commit()
    for entry in suite["models"]:
        seed = entry.get("seed", 2020)
        if record_key(training_run(entry["suite"], entry["label"], seed)["dataset"], entry["label"]) in done:
            continue
        checkpoint = newest_checkpoint(entry["suite"], entry["label"], seed)
        with tempfile.TemporaryDirectory() as scratch:  # RecBole writes log/ where it runs
            cwd = os.getcwd()
            os.chdir(scratch)
            try:
                record = measure(
                    checkpoint,
                    entry["label"],
                    suite.get("k", 50),
                    suite.get("workers", 2),
                    suite.get("lookups", 100_000),
                    suite.get("online_users", 200),
                )
            finally:
                os.chdir(cwd)
        print(
            f"{record['label']}: precache {record['precache_seconds']:.0f} s, lookup p50 {record['lookup_p50_ms']:.3f} "
            f"ms, on the fly p50 {record['online_p50_ms']:.1f} ms",
            flush=True,
        )
        with open(results_file, "a", encoding="utf-8") as f:
            f.write(json.dumps({"suite": suite_name, "git_commit": commit, **record}) + "\n")
    return 0


def report_lines(suite_name, suite, records):
    """A markdown table of the serving records."""
    lines = [
        f"## {suite_name}",
        "",
        suite.get("description", ""),
        "",
        "| dataset | model | users | precache s (1 process) | precache s (Ray workers) | store MB "
        "| lookup p50 / p99 ms "
        "| on the fly p50 / p99 ms | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        sharded = "–" if r["ray_precache_seconds"] is None else f"{r['ray_precache_seconds']:.0f} ({r['ray_workers']})"
        lines.append(
            f"| {r['dataset']} | {r['label']} | {r['users']} | {r['precache_seconds']:.0f} | {sharded} | "
            f"{r['store_mb']:.1f} | "
            f"{r['lookup_p50_ms']:.3f} / {r['lookup_p99_ms']:.3f} | {r['online_p50_ms']:.1f} / "
            f"{r['online_p99_ms']:.1f} | {r['load_average']:.1f} |"
        )
    return lines + [""]
