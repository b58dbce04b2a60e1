"""`run(test=False)` (issue #33, point 13): a stage-1 model writes its item codes from its best epoch's weights,
as the tested path does, and a stage 1 trained for a tuning search runs no test evaluation."""

import json
import types

import numpy as np
import pytest
import recbole.trainer
from test_tokenizer import FakeEncoder

from recbole_prorec import compat, semantic
from recbole_prorec.quantization import ItemCodeArtifact
from recbole_prorec.quick_start import run
from recbole_prorec.tune import trial

STAGE_ONE = {
    "semantic_model": "fake",
    "text_fields": ["title", "brand", "categories"],
    "code_levels": 2,
    "codebook_size": 4,
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
}
STAGE_TWO = {"d_model": 16, "attention_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "d_ff": 32}


@pytest.fixture(autouse=True)
def fake_text_encoder(monkeypatch):
    monkeypatch.setattr(semantic, "load_sentence_encoder", lambda name, device="cpu": FakeEncoder())


@pytest.fixture
def best_epoch_is_the_first(monkeypatch):
    """Validation scores that fall after epoch 0, so the best weights are epoch 0's and the last differ."""
    scores = iter([0.9, 0.5, 0.1, 0.05])

    def _valid_epoch(self, valid_data, show_progress=False):
        score = next(scores)
        return score, {"ndcg@10": score}

    monkeypatch.setattr(recbole.trainer.Trainer, "_valid_epoch", _valid_epoch)


@pytest.mark.parametrize("test", [False, True])
def test_the_stage_one_artifact_holds_the_best_epochs_weights(fast_run_config, best_epoch_is_the_first, test):
    settings = {**fast_run_config, **STAGE_ONE, "epochs": 3, "learning_rate": 0.05}
    result = run("PRORecTokenizer", "tiny", config_dict=settings, test=test)
    assert result["best_valid_epoch"] == 0 and result["epochs_run"] == 3
    best = compat.load_checkpoint(result["saved_model_file"])
    assert best["epoch"] == 0
    artifact = ItemCodeArtifact.load(result["artifact"]["path"])
    for name, value in artifact.encoder.items():
        np.testing.assert_array_equal(value, best["state_dict"][name].numpy(), err_msg=name)
    assert bool(result["test_result"]) == test


def test_a_stage_one_trained_inside_a_trial_runs_no_test_evaluation(fast_run_config):
    settings = {**fast_run_config, **STAGE_ONE, **STAGE_TWO, "tokenizer_config": {"epochs": 1}}
    result = run("PRORec", "tiny", config_dict=settings, test=False)
    assert result["test_result"] == {} and result["stage_one"]["test_result"] == {}
    assert result["stage_one"]["best_valid_result"]  # validated, as a trial chooses


def test_the_stage_one_pinned_for_a_search_runs_no_test_evaluation(fast_run_config, monkeypatch):
    """`pin_stage_one` trains stage 1 once for every trial (a Ray task, run in-process here)."""
    import ray

    monkeypatch.setattr(ray, "remote", lambda **resources: lambda function: types.SimpleNamespace(remote=function))
    monkeypatch.setattr(ray, "get", lambda value: value)
    monkeypatch.setattr(trial, "_ray_gpu_id", lambda: "")
    settings = types.SimpleNamespace(
        model="PRORec", dataset="tiny", config_files=[], cpus_per_trial=1, gpus_per_trial=0
    )
    plan = types.SimpleNamespace(trial_overrides={**fast_run_config, **STAGE_ONE, **STAGE_TWO}, sampled=[])
    artifact = trial.pin_stage_one(settings, plan, space={})
    kept = json.loads(open(f"{artifact}.result.json").read())["result"]
    assert kept["model"] == "PRORecTokenizer" and kept["best_valid_result"] and kept["test_result"] == {}
