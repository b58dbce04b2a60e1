"""Speed and memory: constrained beam search vs SASRec's full-sort ranking, and training seconds per epoch.

    python benchmarks/speed.py --dataset amazon-beauty            # one dataset, printed as ratios
    python benchmarks/run.py --suite speed                        # the suite: JSONL records for report.py

Two measurements, each model of one measurement timed in the same process right after the other:

* `dataset`: on a real dataset, RecBole's full test evaluation (every test user) of each model, untrained,
  and seconds per training epoch extrapolated from `train_batches` optimizer steps over RecBole's own train
  dataloader (the first 5 steps are warm-up and not timed). Beam search cost does not depend on the weights
  (the beam always has `beam_size` live hypotheses), so untrained models time the same as trained ones.
* `scale`: synthetic catalogues of 10k to 1M items with random unique codes (3 levels of 256 + the collision
  level): seconds to rank `users` random histories by beam search vs by SASRec's `full_sort_predict` + top-K.
  This is how the two ranking costs grow with the item count: full-sort is linear in it, beam search is not.

Each record keeps the machine's 1-minute load average when it was taken: timings taken beside other jobs
(load above the thread count) are slower in absolute terms; the ratios of one run are comparable.
Peak RSS is the process's peak after each model (cumulative within one measurement); the main suites record
each model's own peak in its own process.
"""

import argparse
import json
import os
import pathlib
import resource
import time

import common
import numpy as np
import torch
import yaml

from recbole_prorec.precision import resolve_bf16
from recbole_prorec.utils import PROPERTIES_DIR

WARMUP_BATCHES = 5


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _yaml(path):
    """A model YAML as a dict; `1e-12`-style numbers (strings to YAML 1.1) read as floats, as RecBole reads them."""
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    return {key: _number_or_text(value) for key, value in values.items()}


def _number_or_text(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def time_training(model, train_data, batches, learning_rate):
    """Seconds per training epoch, extrapolated from `batches` timed optimizer steps."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    timed, start = 0, None
    for index, interaction in enumerate(train_data):
        if index == WARMUP_BATCHES:
            start = time.perf_counter()
        if index >= WARMUP_BATCHES + batches:
            break
        optimizer.zero_grad()
        model.calculate_loss(interaction).backward()
        optimizer.step()
        timed += index >= WARMUP_BATCHES
    if not timed:
        raise ValueError(f"the train dataloader has only {index + 1} batches: too few to time after warm-up")
    return (time.perf_counter() - start) / timed * len(train_data)


def random_code_artifact(item_tokens, config, path, seed=0):
    """An artifact of random unique codes in TIGER's shape for these items; returns its path prefix.

    For timing a dataset without item text (Sports): cost depends on the code shape and the item count, not on
    what the codes mean. Its embeddings (PRORec's distillation targets) are random too.
    """
    from recbole_prorec.quantization import ItemCodeArtifact

    generator = torch.Generator().manual_seed(seed)
    codes = random_item_codes(len(item_tokens) - 1, config["rqvae_levels"], config["rqvae_codebook_size"], generator)
    embeddings = np.random.default_rng(seed).standard_normal((len(item_tokens), config["d_model"])).astype(np.float32)
    embeddings[0] = 0
    return ItemCodeArtifact(codes.numpy(), list(item_tokens), embeddings, {"method": "random (timing only)"}).save(path)


def model_entries(models):
    """Suite `models` entries as `(label, model name, overrides, config files)`: a name, or a mapping with
    `model` and optionally `label`, `config` and `config_files` (named configurations, relative to the repo)."""
    entries = []
    for entry in models:
        if isinstance(entry, str):
            entry = {"model": entry}
        files = [str(common.REPO / path) for path in entry.get("config_files", [])]
        entries.append((entry.get("label", entry["model"]), entry["model"], dict(entry.get("config") or {}), files))
    return entries


def measure_dataset(dataset, models, train_batches=50, config=None, random_codes=False):
    """One record per model entry: test evaluation seconds over all test users, seconds per epoch, peak RSS.

    `models` are names or mappings (`model_entries`: one model in two configurations, e.g. two layouts);
    training batches come from the model's own dataset class (training windows where it uses them).

    With `random_codes`, the encoder-decoders (TIGER and its subclasses) generate over random item codes
    (`random_code_artifact`) instead of building their own: for datasets without item text.
    """
    import tempfile

    from recbole.data import data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    from recbole_prorec import compat
    from recbole_prorec.model.tiger import TIGER
    from recbole_prorec.quick_start import build_config, create_model_dataset, ensure_dataset_files
    from recbole_prorec.registry import get_model

    compat.apply()

    records = []
    with tempfile.TemporaryDirectory(prefix="speed-codes-") as scratch:
        for label, name, overrides, config_files in model_entries(models):
            model_class = get_model(name)
            model_config = build_config(name, dataset, config_files, {**(config or {}), **overrides})
            ensure_dataset_files(model_config)
            if model_config["torch_threads"]:
                torch.set_num_threads(int(model_config["torch_threads"]))
            init_seed(model_config["seed"], model_config["reproducibility"])
            data = create_model_dataset(model_class, model_config)
            over_random_codes = random_codes and issubclass(model_class, TIGER)
            if over_random_codes:
                model_config["tokenizer_artifact"] = str(
                    random_code_artifact(
                        data.field2id_token[data.iid_field], model_config, pathlib.Path(scratch) / label
                    )
                )
            train_data, _, test_data = data_preparation(model_config, data)
            model = model_class(model_config, train_data.dataset).to(model_config["device"])
            train_seconds = time_training(model, train_data, train_batches, model_config["learning_rate"])
            trainer = Trainer(model_config, model)
            start = time.perf_counter()
            result = trainer.evaluate(test_data, load_best_model=False, show_progress=model_config["show_progress"])
            eval_seconds = time.perf_counter() - start
            records.append(
                {
                    "kind": "dataset",
                    "key": f"dataset-{dataset}-{label}",
                    "dataset": dataset,
                    "model": label,
                    "test_users": test_data.sample_size,
                    "test_eval_seconds": eval_seconds,
                    "train_batches_timed": train_batches,
                    "train_seconds_per_epoch": train_seconds,
                    "peak_rss_mb": peak_rss_mb(),
                    "untrained_test_ndcg@10": result.get("ndcg@10"),
                    "load_average": os.getloadavg()[0],
                    "random_codes": over_random_codes,
                }
            )
            print(
                f"{dataset} {label}: test evaluation {eval_seconds:.1f} s over {records[-1]['test_users']} users, "
                f"{train_seconds:.0f} s per training epoch, peak RSS {records[-1]['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    return records


class _SyntheticCatalogue:
    """The one thing a RecBole sequential model reads from its dataset: the item count."""

    def __init__(self, n_items):
        self.n_items = n_items

    def num(self, field):
        return self.n_items


def _synthetic_config(overrides):
    """A plain dict standing in for RecBole's Config: protocol + SASRec + TIGER defaults + overrides."""
    config = {
        **_yaml(PROPERTIES_DIR / "overall.yaml"),
        **_yaml(PROPERTIES_DIR / "model" / "SASRec.yaml"),
        **_yaml(PROPERTIES_DIR / "model" / "TIGER.yaml"),
    }
    config.update(
        {
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "LIST_SUFFIX": "_list",
            "ITEM_LIST_LENGTH_FIELD": "item_length",
            "NEG_PREFIX": "neg_",
            "device": torch.device("cpu"),
        }
    )
    config.update(overrides or {})
    return config


def random_item_codes(n_items, levels, codebook_size, generator):
    """`[n_items + 1, levels + 1]` unique code tuples (row 0 = padding, all -1), collision level appended."""
    from recbole_prorec.quantization.collisions import add_collision_level

    prefix = torch.randint(codebook_size, (n_items, levels), generator=generator).numpy()
    codes = add_collision_level(prefix)
    return torch.from_numpy(np.concatenate([np.full((1, codes.shape[1]), -1), codes]))


def measure_scale(item_counts, users=1024, batch_size=256, config=None, seed=0):
    """One record per item count: seconds to rank `users` histories by beam search and by SASRec full-sort."""
    from recbole.model.sequential_recommender import SASRec

    from recbole_prorec import compat
    from recbole_prorec.model.beam_search import CodeIndex
    from recbole_prorec.model.seq2seq import CodeSeq2Seq

    compat.apply()

    config = _synthetic_config(config)
    if config["torch_threads"]:
        torch.set_num_threads(int(config["torch_threads"]))
    bf16 = resolve_bf16(config["bf16"], "cpu")
    records = []
    for n_items in item_counts:
        generator = torch.Generator().manual_seed(seed)
        item_codes = random_item_codes(n_items, config["rqvae_levels"], config["rqvae_codebook_size"], generator)
        index = CodeIndex(item_codes)
        seq2seq = CodeSeq2Seq.from_config(index.codebook_sizes, config["MAX_ITEM_LIST_LENGTH"], config).eval()
        sasrec = SASRec(config, _SyntheticCatalogue(n_items + 1)).eval()
        length = config["MAX_ITEM_LIST_LENGTH"]
        histories = torch.randint(1, n_items + 1, (users, length), generator=generator)
        user_ids = torch.arange(users)
        top_k = max(config["topk"])

        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for rows in torch.arange(users).split(batch_size):
                seq2seq.beam_search(item_codes[histories[rows]], index, config["beam_size"], user_ids[rows])
        beam_seconds = time.perf_counter() - start
        beam_rss = peak_rss_mb()

        start = time.perf_counter()
        with torch.no_grad():
            for rows in torch.arange(users).split(batch_size):
                batch = {"item_id_list": histories[rows], "item_length": torch.full((len(rows),), length)}
                sasrec.full_sort_predict(batch).topk(top_k, dim=1)
        full_sort_seconds = time.perf_counter() - start
        records.append(
            {
                "kind": "scale",
                "key": f"scale-{n_items}",
                "n_items": n_items,
                "users": users,
                "beam_seconds": beam_seconds,
                "full_sort_seconds": full_sort_seconds,
                "beam_ms_per_user": 1000 * beam_seconds / users,
                "full_sort_ms_per_user": 1000 * full_sort_seconds / users,
                "peak_rss_mb_after_beam": beam_rss,
                "peak_rss_mb": peak_rss_mb(),
                "load_average": os.getloadavg()[0],
            }
        )
        print(
            f"{n_items:>9,} items: beam search {records[-1]['beam_ms_per_user']:.2f} ms/user, SASRec full-sort "
            f"{records[-1]['full_sort_ms_per_user']:.2f} ms/user (ratio {beam_seconds / full_sort_seconds:.1f})",
            flush=True,
        )
    return records


def run_suite(suite_name, suite, results_file, device="cpu"):
    """Measurements of a `kind: speed` suite not yet in `results_file`, appended as JSON lines.

    A dataset's models count as done only together, since their ratios need one process and one run.
    """
    if device != "cpu":
        raise SystemExit("the speed suite times CPU runs (the machines this project benchmarks on); use --device cpu")
    done = common.finished_keys(results_file)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    settings = {**common.SHARED_SETTINGS, **suite.get("config", {})}
    commit = common.git_commit()

    def append(records):
        with open(results_file, "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps({"suite": suite_name, "git_commit": commit, **record}) + "\n")

    for dataset, options in (suite.get("datasets") or {}).items():
        labels = [entry[0] for entry in model_entries(options["models"])]
        if all(f"dataset-{dataset}-{label}" in done for label in labels):
            continue
        print(f"timing {', '.join(labels)} on {dataset}", flush=True)
        append(
            measure_dataset(
                dataset,
                options["models"],
                options.get("train_batches", 50),
                {**settings, **options.get("config", {})},
                options.get("random_codes", False),
            )
        )
    scale = suite.get("scale")
    if scale:
        for n_items in scale["item_counts"]:
            if f"scale-{n_items}" not in done:
                append(
                    measure_scale(
                        [n_items],
                        scale.get("users", 1024),
                        scale.get("batch_size", 256),
                        {**suite.get("config", {}), **scale.get("config", {})},
                    )
                )
    return 0


def report_lines(suite_name, suite, records, plots_dir):
    """Markdown tables (ratios against SASRec / full-sort) and the evaluation-time-vs-item-count plot."""
    lines = [f"## {suite_name}", "", suite.get("description", ""), ""]
    by_dataset = {}
    for record in records:
        if record["kind"] == "dataset":
            by_dataset.setdefault(record["dataset"], {})[record["model"]] = record  # the latest run wins
    if by_dataset:
        lines += [
            "| dataset | model | test users | test evaluation s | x SASRec | s / train epoch | x SASRec | "
            "peak RSS MB (cumulative) | load |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for dataset, models in by_dataset.items():
            base = models.get("SASRec")
            for name, r in models.items():
                name += " (random codes)" if r.get("random_codes") else ""
                eval_ratio = f"{r['test_eval_seconds'] / base['test_eval_seconds']:.1f}" if base else "–"
                train_ratio = f"{r['train_seconds_per_epoch'] / base['train_seconds_per_epoch']:.1f}" if base else "–"
                lines.append(
                    f"| {dataset} | {name} | {r['test_users']} | {r['test_eval_seconds']:.1f} | {eval_ratio} | "
                    f"{r['train_seconds_per_epoch']:.0f} | {train_ratio} | {r['peak_rss_mb']:.0f} | {_load(r)} |"
                )
        lines.append("")
    scale = sorted({r["n_items"]: r for r in records if r["kind"] == "scale"}.values(), key=lambda r: r["n_items"])
    if scale:
        lines += [
            "| items | users | beam search ms/user | SASRec full-sort ms/user | beam / full-sort | peak RSS MB "
            "| load |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in scale:
            lines.append(
                f"| {r['n_items']:,} | {r['users']} | {r['beam_ms_per_user']:.2f} | "
                f"{r['full_sort_ms_per_user']:.2f} | {r['beam_seconds'] / r['full_sort_seconds']:.2f} | "
                f"{r['peak_rss_mb']:.0f} | {_load(r)} |"
            )
        plot = plots_dir / f"{suite_name}-scaling.png"
        plot_scaling(scale, plot)
        lines += ["", f"![evaluation time vs item count](plots/{plot.name})", ""]
    return lines


def _load(record):
    return f"{record['load_average']:.1f}" if "load_average" in record else "–"


def plot_scaling(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [r["n_items"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(counts, [r["beam_ms_per_user"] for r in records], "o-", label="constrained beam search (TIGER/PRORec)")
    ax.plot(counts, [r["full_sort_ms_per_user"] for r in records], "s-", label="full-sort + top-K (SASRec)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items in the catalogue")
    ax.set_ylabel("ms per user (CPU)")
    ax.set_title("Ranking cost vs catalogue size")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", help="time SASRec and TIGER on this dataset")
    parser.add_argument("--models", nargs="+", default=["SASRec", "TIGER"])
    parser.add_argument("--train_batches", type=int, default=50)
    parser.add_argument("--item_counts", type=int, nargs="*", default=[], help="synthetic catalogue sizes")
    parser.add_argument("--users", type=int, default=1024)
    args = parser.parse_args(argv)
    if args.dataset:
        records = measure_dataset(args.dataset, args.models, args.train_batches)
        base = records[0]
        for record in records[1:]:
            print(
                f"{record['model']} / {base['model']}: test evaluation "
                f"x{record['test_eval_seconds'] / base['test_eval_seconds']:.1f}, "
                f"training epoch x{record['train_seconds_per_epoch'] / base['train_seconds_per_epoch']:.1f}"
            )
    if args.item_counts:
        measure_scale(args.item_counts, args.users)


if __name__ == "__main__":
    main()
