"""The CLI and run(): RecBole's flags, our models and RecBole's alike, clear errors, loadable checkpoints."""

import json

import pytest
import torch

from recbole_prorec import compat
from recbole_prorec.cli import main, parse_overrides
from recbole_prorec.options import OptionError
from recbole_prorec.quick_start import best_checkpoint_path, kept_epoch, run
from recbole_prorec.registry import get_model


def test_overrides_are_yaml_typed_and_never_evaluated():
    overrides = parse_overrides(["--epochs=3", "--topk=[5, 10]", "--learning_rate", "1e-3", "--note=__import__('os')"])
    assert overrides == {"epochs": 3, "topk": [5, 10], "learning_rate": 1e-3, "note": "__import__('os')"}


def test_override_without_value_is_an_error():
    with pytest.raises(OptionError, match="--epochs has no value"):
        parse_overrides(["--epochs"])


def test_get_model_finds_recbole_builtins_and_lists_models_when_unknown():
    assert get_model("SASRec").__name__ == "SASRec"
    with pytest.raises(ValueError, match="Unknown model 'NoSuchModel'.*SASRec"):
        get_model("NoSuchModel")


def test_sasrec_runs_one_epoch_and_reports_metrics(fast_run_config):
    result = run("SASRec", "tiny", config_dict=fast_run_config)
    assert result["epochs_run"] == 1
    ((epoch, score, seconds),) = result["valid_curve"]
    assert (epoch, score) == (0, result["best_valid_score"]) and seconds > 0
    ((epoch, metrics),) = result["valid_metrics"]
    assert epoch == 0 and metrics == result["best_valid_result"]
    assert set(result["test_result"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}
    checkpoint = compat.load_checkpoint(result["saved_model_file"])
    assert checkpoint["epoch"] == 0 and "state_dict" in checkpoint
    # RecBole's own loader (torch.load with its weights-only default) reads the same file.
    assert torch.load(result["saved_model_file"], map_location="cpu")["config"]["model"] == "SASRec"


def test_a_resumed_run_counts_the_epochs_of_its_checkpoint(fast_run_config):
    first = run("SASRec", "tiny", config_dict=fast_run_config)
    resumed = run(
        "SASRec", "tiny", config_dict={**fast_run_config, "epochs": 2, "resume_checkpoint": first["saved_model_file"]}
    )
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs_run"] == 2
    assert [epoch for epoch, _, _ in resumed["valid_curve"]] == [1]
    assert first["resumed_from_epoch"] is None


def test_a_resumed_run_whose_checkpoint_stays_best_reports_the_checkpoints_epoch_and_result(fast_run_config, tmp_path):
    first = run("SASRec", "tiny", config_dict=fast_run_config)
    checkpoint = compat.load_checkpoint(first["saved_model_file"])
    checkpoint["best_valid_score"] = 1.0  # no later epoch can match it
    unbeaten = tmp_path / "SASRec-unbeaten.pth"
    torch.save(checkpoint, unbeaten, pickle_protocol=2)
    resumed = run("SASRec", "tiny", config_dict={**fast_run_config, "epochs": 2, "resume_checkpoint": str(unbeaten)})
    assert resumed["best_valid_epoch"] == 0 and resumed["best_valid_score"] == 1.0
    # the checkpoint's weights validated again, as the first run validated them
    assert resumed["best_valid_result"] == first["best_valid_result"]


def test_an_interrupted_run_resumes_from_its_latest_checkpoint_and_tests_its_best(fast_run_config, tmp_path):
    class Interrupted(Exception):
        pass

    def interrupt_after_epoch_1(epoch, score):
        if epoch == 1:
            raise Interrupted

    settings = {**fast_run_config, "epochs": 3, "save_latest_checkpoint": True, "checkpoint_dir": str(tmp_path)}
    with pytest.raises(Interrupted):
        run("SASRec", "tiny", config_dict=settings, callback_fn=interrupt_after_epoch_1)
    (latest,) = tmp_path.glob("*-latest.pth")
    assert compat.load_checkpoint(latest)["epoch"] == 1

    resumed = run("SASRec", "tiny", config_dict={**settings, "resume_checkpoint": str(latest)})
    assert resumed["resumed_from_epoch"] == 2 and resumed["epochs_run"] == 3
    # the best checkpoint, not the latest, is what the run tested and reports
    assert resumed["saved_model_file"] == best_checkpoint_path(latest) != str(latest)
    assert resumed["best_valid_epoch"] == compat.load_checkpoint(resumed["saved_model_file"])["epoch"]
    assert resumed["best_valid_result"] and not latest.exists()


def test_the_kept_epoch_is_the_last_of_tied_best_scores():
    curve = [[0, 0.01, 1.0], [1, 0.03, 2.0], [2, 0.02, 3.0], [3, 0.03, 4.0]]
    assert kept_epoch(curve, 0.03) == 3  # RecBole's early stopping counts a tie as an improvement
    assert kept_epoch(curve[2:3], 0.05) is None  # resumed: the best came from an earlier process


def test_leave_one_out_puts_each_users_last_item_in_test(fast_run_config):
    from recbole.data import create_dataset, data_preparation

    from recbole_prorec.quick_start import build_config

    config = build_config("SASRec", "tiny", config_dict=fast_run_config)
    _, _, test_data = data_preparation(config, create_dataset(config))
    dataset = test_data._dataset
    users = dataset.inter_feat[dataset.uid_field].numpy()
    items = dataset.inter_feat[dataset.iid_field].numpy()
    times = dataset.inter_feat[dataset.time_field].numpy()
    for user in set(users.tolist()):
        rows = users == user
        assert times[rows].max() == times[rows][-1]
    raw_last = {}
    for line in open(f"{fast_run_config['data_path']}/tiny/tiny.inter").read().splitlines()[1:]:
        user, item, _ = line.split("\t")
        raw_last[user] = item
    uid_tokens = dataset.field2id_token[dataset.uid_field]
    iid_tokens = dataset.field2id_token[dataset.iid_field]
    last_rows = {uid_tokens[u]: iid_tokens[i] for u, i in zip(users, items)}
    assert last_rows == raw_last


def test_cli_runs_sasrec_and_prints_results(fast_run_config, capsys, tmp_path):
    """The printed table holds the run's numbers: those of `run()` with the same seed, and consistent metrics."""
    output = tmp_path / "result.json"
    args = ["--model=SASRec", "--dataset=tiny", f"--json={output}"]
    assert main(args + [f"--{key}={value}" for key, value in fast_run_config.items()]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = printed.index(f"{'metric':<12}{'valid':>10}{'test':>10}")
    table = {}
    for line in printed[header + 1 :]:
        metric, valid, test = line.split()
        table[metric] = (float(valid), float(test))
    assert set(table) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}
    written = json.loads(output.read_text())
    direct = run("SASRec", "tiny", config_dict=fast_run_config)  # same seed, reproducibility on: same numbers
    for name, result in (("--json", written), ("run()", direct)):
        for metric, (valid, test) in table.items():
            assert (valid, test) == (
                pytest.approx(result["best_valid_result"][metric], abs=5e-5),
                pytest.approx(result["test_result"][metric], abs=5e-5),
            ), (name, metric)
    for column in (0, 1):
        value = {metric: pair[column] for metric, pair in table.items()}
        assert all(0.0 <= v <= 1.0 for v in value.values())
        for m in ("recall", "ndcg"):  # more positions can only find more of the one held-out item
            assert value[f"{m}@5"] <= value[f"{m}@10"] <= value[f"{m}@20"]
        for k in (5, 10, 20):  # one relevant item: its NDCG@k is 1/log2(rank + 1) <= 1 when found, 0 otherwise
            assert value[f"ndcg@{k}"] <= value[f"recall@{k}"]
    assert table["recall@20"][1] > 0  # a trained model finds some test items among 31


def test_cli_unknown_model_and_dataset_are_clear_errors(fast_run_config, capsys):
    assert main(["--model=NoSuchModel", "--dataset=tiny"]) == 2
    assert "Unknown model 'NoSuchModel'" in capsys.readouterr().err
    assert main(["--model=SASRec", "--dataset=nowhere", f"--data_path={fast_run_config['data_path']}"]) == 2
    error = capsys.readouterr().err
    assert "Unknown dataset 'nowhere'" in error and "tiny" in error


def test_evaluate_checkpoint_reproduces_the_runs_test_metrics(fast_run_config):
    from recbole_prorec.evaluate import evaluate_checkpoint

    result = run("SASRec", "tiny", config_dict=fast_run_config)
    evaluated = evaluate_checkpoint(result["saved_model_file"])
    assert evaluated["epoch"] == 0
    assert evaluated["test_result"] == pytest.approx(result["test_result"])


def test_importing_the_package_changes_nothing_global():
    import subprocess
    import sys

    code = (
        "import torch; from recbole.trainer import trainer; import recbole_prorec, recbole_prorec.model; "
        "print(getattr(trainer.Trainer._save_checkpoint, 'saves_protocol_2', False), torch.save.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "torch.serialization"]
