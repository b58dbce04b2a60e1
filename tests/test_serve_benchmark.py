"""benchmarks/serving.py's suite runner: a model already recorded is not measured again."""

import json
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import serving  # noqa: E402


@pytest.fixture
def training_suite(monkeypatch):
    suites = {"train": {"datasets": ["tiny"], "runs": [{"model": "SASRec"}, {"model": "TIGER", "label": "T"}]}}
    monkeypatch.setattr(common, "load_suite", lambda name: suites[name])
    monkeypatch.setattr(serving, "newest_checkpoint", lambda suite, label, seed: pathlib.Path(f"{label}.pth"))


def test_run_suite_measures_only_the_models_not_yet_recorded(training_suite, tmp_path, monkeypatch):
    results = tmp_path / "serving.jsonl"
    results.write_text(json.dumps({"key": "serving-tiny-SASRec"}) + "\n")
    measured = []

    def measure(checkpoint, label, *args):
        measured.append(label)
        return {"key": f"serving-tiny-{label}", "label": label, "precache_seconds": 1.0, "lookup_p50_ms": 0.1}

    monkeypatch.setattr(
        serving, "measure", lambda checkpoint, label, *args: {**measure(checkpoint, label), "online_p50_ms": 1.0}
    )
    suite = {"kind": "serving", "models": [{"suite": "train", "label": "SASRec"}, {"suite": "train", "label": "T"}]}
    assert serving.run_suite("serving", suite, results) == 0
    assert measured == ["T"]
    assert [json.loads(line)["key"] for line in results.read_text().splitlines()] == [
        "serving-tiny-SASRec",
        "serving-tiny-T",
    ]
