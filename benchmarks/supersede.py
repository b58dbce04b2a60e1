"""Give a suite's row the records of another suite's row that ran its configuration, archiving what it held.

    python benchmarks/supersede.py --into main-sports "PRORec (keyword text)" \\
        --from levers-sports "PRORec (keyword text), cosine schedule over 10 planned epochs" \\
        --archive main-prorec-short-codes.jsonl [--seeds 2020 2021 2022] [--accept-differences]

Why: when a default changes, the lever suite that chose it has already run it (often for every seed), and the
main table's row of the same model still holds runs of the old default. Running them again spends hours for the
same numbers; editing JSONL files by hand loses records. This copies each seed's source record under the target
row's key, with `copied_from` naming the source (`suite:key`), and appends the target row's previous records to
`results/archive/<archive>` (add a line to results/archive/README.md saying what they measured).

The two rows must ask for the same run: their suite settings (`overrides`, `config_files`) are compared, and any
difference stops the copy unless `--accept-differences` says you checked that each one restates a default (for
example a pinned `tokenizer_config` that equals stage 1's own). Both result files are written atomically.
"""

import argparse
import sys

import common


def setting_differences(target, source):
    """`key: target value != source value` for every suite setting the two runs do not share."""
    left = {**target["overrides"], "config_files": target["config_files"]}
    right = {**source.get("overrides", {}), "config_files": source.get("config_files", [])}
    return [
        f"{key}: {left.get(key, '<unset>')!r} here, {right.get(key, '<unset>')!r} in the source"
        for key in sorted(set(left) | set(right))
        if key != "seed" and left.get(key) != right.get(key)
    ]


def supersede(into, into_label, source, source_label, archive, seeds=None, accept_differences=False):
    """Copy `source`'s `source_label` records into `into`'s `into_label` row; return (copied, archived) counts."""
    targets = [spec for spec in common.plan(common.load_suite(into), seeds) if spec["label"] == into_label]
    if not targets:
        raise SystemExit(f"suite {into} has no run labelled {into_label!r} (benchmarks/suites/{into}.yaml)")
    source_file = common.RESULTS / f"{source}.jsonl"
    by_run = {(r["dataset"], r["seed"]): r for r in common.read_records(source_file) if r["label"] == source_label}
    missing = [f"{t['dataset']} seed {t['seed']}" for t in targets if (t["dataset"], t["seed"]) not in by_run]
    if missing:
        raise SystemExit(f"{source_file} has no {source_label!r} record for {', '.join(missing)}")
    differences = sorted({d for t in targets for d in setting_differences(t, by_run[(t["dataset"], t["seed"])])})
    if differences and not accept_differences:
        raise SystemExit(
            "the rows' settings differ; if each restates a default, pass --accept-differences:\n  "
            + "\n  ".join(differences)
        )

    into_file = common.RESULTS / f"{into}.jsonl"
    replaced = {(t["dataset"], t["seed"]) for t in targets}
    kept, superseded = [], []
    for record in common.read_records(into_file):
        same_row = record["label"] == into_label and (record["dataset"], record["seed"]) in replaced
        (superseded if same_row else kept).append(record)
    copies = []
    for target in targets:
        record = by_run[(target["dataset"], target["seed"])]
        copy = {key: value for key, value in record.items() if key not in ("key", "copied_from", "recorded_as")}
        copies.append(
            {
                "key": target["key"],
                "copied_from": f"{source}:{record['key']}",
                **copy,
                "suite": into,
                "label": into_label,
            }
        )
    if superseded:
        archive_file = common.RESULTS / "archive" / archive
        common.write_records(archive_file, common.read_records(archive_file) + superseded)
    common.write_records(into_file, kept + copies)
    return len(copies), len(superseded)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--into", nargs=2, metavar=("SUITE", "LABEL"), required=True, help="the row to fill")
    parser.add_argument("--from", dest="source", nargs=2, metavar=("SUITE", "LABEL"), required=True)
    parser.add_argument("--archive", required=True, help="file under results/archive/ for the row's old records")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to copy (default: the target suite's)")
    parser.add_argument("--accept-differences", action="store_true", help="copy although the settings differ")
    args = parser.parse_args(argv)
    if "/" in args.archive or not args.archive.endswith(".jsonl"):
        parser.error(f"--archive must be a file name ending in .jsonl, got {args.archive!r}")
    copied, archived = supersede(*args.into, *args.source, args.archive, args.seeds, args.accept_differences)
    print(f"{args.into[0]} {args.into[1]!r}: {copied} records copied from {args.source[0]}, {archived} archived")
    if archived:
        print(f"say what the archived records measured in {common.RESULTS / 'archive' / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
