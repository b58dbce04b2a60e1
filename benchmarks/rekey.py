"""Re-key a suite's records after an edit that pins what they ran, so that the runner does not run them again.

    python benchmarks/rekey.py --suite levers-beauty [--since HEAD]

Why: a run's key digests its suite settings. When a default changes, the lever rows recorded under the old one
pin it in their `config` (for example `epochs: 40`): they still describe what ran, but under a new key. Edit the
suite file, then run this before committing it: every record whose key the suite planned at `--since` (a git
revision; the suite file committed there) gets the key the edited suite plans for the same label, dataset and
seed, and keeps the old one as `recorded_as`. The results file is written atomically.
"""

import argparse
import subprocess
import sys

import common
import yaml


def suite_at(revision, name):
    """The suite YAML as committed at a git `revision`."""
    path = (common.SUITES / f"{name}.yaml").relative_to(common.REPO)
    try:
        text = subprocess.run(
            ["git", "show", f"{revision}:{path.as_posix()}"],
            cwd=common.REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"git show {revision}:{path} failed: {error.stderr.strip()}") from None
    return yaml.safe_load(text) or {}


def rekey(name, old_suite, seeds=None):
    """Give every record planned by `old_suite` the key the current suite plans for its run; return how many moved."""
    suite = common.load_suite(name)
    seeds = seeds or sorted(set(suite.get("seeds", [2020])) | set(old_suite.get("seeds", [2020])))
    current = {(s["label"], s["dataset"], s["seed"]): s["key"] for s in common.plan(suite, seeds)}
    planned_before = {s["key"]: (s["label"], s["dataset"], s["seed"]) for s in common.plan(old_suite, seeds)}
    results_file = common.RESULTS / f"{name}.jsonl"
    records, moved = [], 0
    for record in common.read_records(results_file):
        run = planned_before.get(record["key"])
        if run in current and current[run] != record["key"]:
            rest = {key: value for key, value in record.items() if key not in ("key", "recorded_as")}
            record = {"key": current[run], "recorded_as": record.get("recorded_as", record["key"]), **rest}
            moved += 1
        records.append(record)
    if moved:
        common.write_records(results_file, records)
    return moved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", required=True, help="a suite name: benchmarks/suites/<name>.yaml")
    parser.add_argument("--since", default="HEAD", help="git revision whose suite file planned the records")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to consider (default: both versions' seeds)")
    args = parser.parse_args(argv)
    moved = rekey(args.suite, suite_at(args.since, args.suite), args.seeds)
    print(f"{args.suite}: {moved} records re-keyed (old keys kept as recorded_as)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
