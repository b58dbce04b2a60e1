"""What every benchmark script shares: the folders, the settings every run reads, and suites and their records.

`run.py` (training suites), `speed.py`, `serving.py`, `report.py`, `supersede.py`, `rekey.py` and `profile_step.py`
import this module; none of them imports another script for these.
"""

import json
import pathlib
import subprocess

import yaml

BENCHMARKS = pathlib.Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
SUITES = BENCHMARKS / "suites"
RESULTS = BENCHMARKS / "results"
WORK = BENCHMARKS / "work"

# Every run of every suite reads the same converted data and the same semantic-embedding / artifact cache.
SHARED_SETTINGS = {
    "data_path": str(WORK / "dataset"),
    "raw_data_path": str(REPO.parent / "shared" / "data"),
    "cache_dir": str(WORK / "cache"),
    "show_progress": False,
    "save_latest_checkpoint": True,  # an interrupted run resumes from its last validated epoch (run.py)
}


def load_suite(name):
    """The suite YAML as a dict, with a clear error for a missing file or key."""
    path = SUITES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SUITES.glob("*.yaml")))
        raise SystemExit(f"No suite '{name}': expected {path}. Suites: {known}")
    with open(path, encoding="utf-8") as f:
        suite = yaml.safe_load(f) or {}
    if suite.get("kind", "train") == "train":  # speed and serving suites are checked where they run
        for key in ("datasets", "runs"):
            if not suite.get(key):
                raise SystemExit(f"{path}: key '{key}' is missing or empty")
        for index, entry in enumerate(suite["runs"]):
            if "model" not in entry:
                raise SystemExit(f"{path}: runs[{index}] has no 'model' key")
    return suite


def plan(suite, seeds=None, only=None):
    """Every run of a training suite as a dict: label, model, dataset, seed, overrides and a stable key."""
    runs = []
    labels = {entry.get("label", entry["model"]) for entry in suite["runs"]}
    for dataset in suite["datasets"]:
        for entry in suite["runs"]:
            label = entry.get("label", entry["model"])
            # a name in `only` selects the run with that label; a model name that labels no run selects its runs
            if only and label not in only and (entry["model"] not in only or entry["model"] in labels):
                continue
            for seed in seeds or suite.get("seeds", [2020]):
                overrides = {**suite.get("config", {}), **entry.get("config", {}), "seed": seed}
                overrides.update(suite.get("dataset_config", {}).get(dataset, {}))
                # named configurations (relative to the repo): the suite's, then the run's
                config_files = list(suite.get("config_files", [])) + list(entry.get("config_files", []))
                settings = {**overrides, "config_files": config_files} if config_files else overrides
                key = f"{label}-{dataset}-seed{seed}-{_digest(settings)}"
                runs.append(
                    {
                        "label": label,
                        "model": entry["model"],
                        "dataset": dataset,
                        "seed": seed,
                        "overrides": overrides,
                        "config_files": config_files,
                        "key": key,
                    }
                )
    return runs


def _digest(settings):
    from recbole_prorec.utils import settings_digest

    return settings_digest(settings)


def numbered_records(results_file):
    """`(line number, record)` for every record of a suite's JSONL file (a missing file holds none); a line that is
    not JSON stops with its file and line."""
    if not results_file.is_file():
        return
    with open(results_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise SystemExit(f"{results_file}:{number}: not JSON ({error})") from None


def read_records(results_file):
    """Every record of a suite's JSONL file, in order."""
    return [record for _, record in numbered_records(results_file)]


def finished_keys(results_file):
    """Keys of the runs already recorded in a suite's JSONL file."""
    keys = set()
    for number, record in numbered_records(results_file):
        if "key" not in record:
            raise SystemExit(f"{results_file}:{number}: not a run record (no 'key')")
        keys.add(record["key"])
    return keys


def write_records(results_file, records):
    """Replace a JSONL file by `records`, one per line, atomically (a crash leaves the old file whole)."""
    from recbole_prorec.utils import write_atomically

    write_atomically(results_file, "".join(json.dumps(record) + "\n" for record in records))


def git_commit():
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
