"""Run a benchmark suite: every (run, dataset, seed) of `benchmarks/suites/<suite>.yaml`, each in its own process.

    python benchmarks/run.py --suite main-beauty [--seeds 0 1 2] [--device cpu|cuda] [--only PRORec TIGER]

Each run goes through `recbole_prorec.quick_start.run`, the function behind the CLI, in a child process (a
crash or a memory peak stays in that run, and peak RSS is per run). Its record is appended as one JSON line to
`benchmarks/results/<suite>.jsonl`; a run whose key (label, dataset, seed, overrides) is already there is
skipped, so an interrupted suite resumes where it stopped. A run interrupted mid-training resumes from the
newest checkpoint in its working folder (`benchmarks/work/<suite>/<key>/saved/`): the `-latest.pth` one that
`save_latest_checkpoint` rewrites after every validation (runs before it only left their best epoch's).

Suites of `kind: speed` are timed by `benchmarks/speed.py` instead (see there).
"""

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import common


def resume_overrides(model, run_dir):
    """Overrides that continue an interrupted run from the newest checkpoint RecBole left in `run_dir/saved`.

    A stage-2 model's own checkpoint resumes stage 2; a checkpoint of its stage-1 model (no artifact yet)
    resumes stage 1 through `tokenizer_config`.
    """
    from recbole_prorec.registry import get_model

    model_class = get_model(model)
    checkpoints = sorted((run_dir / "saved").glob("*.pth"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        return {}
    newest = checkpoints[-1]
    if newest.name.startswith(f"{model_class.__name__}-"):
        return {"resume_checkpoint": str(newest)}
    stage_one = getattr(model_class, "stage_one_model", None)
    if stage_one and newest.name.startswith(f"{stage_one}-"):
        return {"tokenizer_config_resume": str(newest)}
    return {}


def child_main(spec_file, record_file):
    """Child process: one `run(...)`, its record written to `record_file` (JSON)."""
    from recbole_prorec.quick_start import run

    with open(spec_file, encoding="utf-8") as f:
        spec = json.load(f)
    overrides = dict(spec["overrides"])
    stage_one_resume = overrides.pop("tokenizer_config_resume", None)
    if stage_one_resume:
        overrides["tokenizer_config"] = {
            **(overrides.get("tokenizer_config") or {}),
            "resume_checkpoint": stage_one_resume,
        }
    start = time.perf_counter()
    config_files = [str(common.REPO / path) for path in spec.get("config_files", [])]
    result = run(spec["model"], spec["dataset"], config_file_list=config_files, config_dict=overrides)
    record = {
        "key": spec["key"],
        "suite": spec["suite"],
        "label": spec["label"],
        "git_commit": spec["git_commit"],
        "overrides": spec["overrides"],
        "wall_seconds": time.perf_counter() - start,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **result,
    }
    tmp = pathlib.Path(f"{record_file}.tmp")
    tmp.write_text(json.dumps(record, default=str), encoding="utf-8")
    os.replace(tmp, record_file)


_EPOCH_LINE = re.compile(r"(epoch \d+) evaluating \[time: ([\d.]+)s, valid_score: ([\d.]+)\]")


def follow_progress(child, log_path, offset, poll_seconds=5.0):
    """Wait for `child`, echoing each validation RecBole logs (`epoch N: valid score`) as it appears."""
    while True:
        returncode = child.poll()
        with open(log_path, encoding="utf-8", errors="replace") as log:
            log.seek(offset)
            text = log.read()
        complete = text[: text.rfind("\n") + 1]
        offset += len(complete.encode("utf-8", errors="replace"))
        for match in _EPOCH_LINE.finditer(complete):
            print(f"    {match.group(1)}: valid score {match.group(3)} ({match.group(2)} s to validate)", flush=True)
        if returncode is not None:
            return returncode
        time.sleep(poll_seconds)


def run_one(suite_name, spec, device, results_file):
    """Run one planned run in a child process; append its record to the suite's JSONL and return it (None on failure).

    Each record is appended with one `write`, so runners working on parts of one suite (`--only`) can share a file.
    """
    run_dir = common.WORK / suite_name / spec["key"]
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_file, record_file = run_dir / "spec.json", run_dir / "record.json"
    if record_file.is_file():  # the run finished but its runner died before appending: adopt the record
        return _append(record_file, spec, results_file)
    overrides = {**common.SHARED_SETTINGS, "use_gpu": device == "cuda", **spec["overrides"]}
    overrides.update(resume_overrides(spec["model"], run_dir))
    full_spec = {**spec, "suite": suite_name, "overrides": overrides, "git_commit": common.git_commit()}
    spec_file.write_text(json.dumps(full_spec, indent=1), encoding="utf-8")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(common.REPO), os.environ.get("PYTHONPATH")])),
    }
    log_path = run_dir / "run.log"
    with open(log_path, "a", encoding="utf-8") as log:
        start_offset = log.tell()
        child = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", str(spec_file), str(record_file)],
            cwd=run_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        returncode = follow_progress(child, log_path, start_offset)
    if returncode != 0 or not record_file.is_file():
        print(f"  FAILED (exit {returncode}); see {log_path}", flush=True)
        return None
    return _append(record_file, spec, results_file)


def repo_relative(value):
    """`value` with every string path under the checkout made relative to it (records are committed)."""
    if isinstance(value, dict):
        return {key: repo_relative(item) for key, item in value.items()}
    if isinstance(value, list):
        return [repo_relative(item) for item in value]
    if isinstance(value, str) and value.startswith(f"{common.REPO}{os.sep}"):
        return os.path.relpath(value, common.REPO)
    return value


def _append(record_file, spec, results_file):
    record = repo_relative(json.loads(record_file.read_text(encoding="utf-8")))
    record["overrides"] = spec["overrides"]  # the suite's settings, not the machine's paths
    with open(results_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
    return record


def _summary(record):
    test = record.get("test_result", {})
    return (
        f"epochs {record['epochs_run']} (best {record['best_valid_epoch']}), "
        f"test R@10 {test.get('recall@10', float('nan')):.4f} N@10 {test.get('ndcg@10', float('nan')):.4f}, "
        f"{record['train_seconds_per_epoch']:.0f} s/epoch"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", help="a suite name: benchmarks/suites/<name>.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the suite's seeds)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--only", nargs="+", help="run only these labels or model names")
    parser.add_argument("--child", nargs=2, metavar=("SPEC", "RECORD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(*args.child)
    if not args.suite:
        parser.error("--suite is required")
    suite = common.load_suite(args.suite)
    if suite.get("kind") == "speed":
        import speed  # torch-heavy: imported only for its suites

        return speed.run_suite(args.suite, suite, common.RESULTS / f"{args.suite}.jsonl", device=args.device)
    if suite.get("kind") == "serving":
        import serving

        return serving.run_suite(args.suite, suite, common.RESULTS / f"{args.suite}.jsonl")
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    results_file = common.RESULTS / f"{args.suite}.jsonl"
    runs = common.plan(suite, args.seeds, args.only)
    done = common.finished_keys(results_file)
    todo = [spec for spec in runs if spec["key"] not in done]
    print(f"suite {args.suite}: {len(runs)} runs, {len(runs) - len(todo)} already in {results_file}", flush=True)
    failures = 0
    for index, spec in enumerate(todo, 1):
        print(
            f"[{index}/{len(todo)}] {spec['label']} on {spec['dataset']}, seed {spec['seed']} "
            f"(log: {common.WORK / args.suite / spec['key'] / 'run.log'})",
            flush=True,
        )
        start = time.perf_counter()
        record = run_one(args.suite, spec, args.device, results_file)
        if record:
            print(f"  done in {(time.perf_counter() - start) / 60:.1f} min: {_summary(record)}", flush=True)
        else:
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
