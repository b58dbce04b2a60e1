"""Every option that takes a checkpoint (issue #33, point 12): `--resume_checkpoint`, `recbole_prorec.evaluate`,
`recbole_prorec.tokenize` and the stage-1 resume through `tokenizer_config` refuse, in one line naming the file, a
file that is not a checkpoint, a checkpoint of another model and one whose data changed since it was saved."""

import pathlib

import pytest
import torch
from conftest import write_tiny_dataset
from test_cli_pipeline import STAGE_ONE
from test_tokenizer import FakeEncoder

from recbole_prorec import cli, evaluate, semantic, tokenize
from recbole_prorec.quick_start import run


def one_line_error(capsys):
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error, error
    return error


def cli_args(fast_run_config, model="SASRec", **extra):
    settings = {**fast_run_config, **extra}
    return [f"--model={model}", "--dataset=tiny"] + [f"--{key}={value}" for key, value in settings.items()]


@pytest.fixture
def sasrec_checkpoint(fast_run_config):
    return pathlib.Path(run("SASRec", "tiny", config_dict=fast_run_config)["saved_model_file"])


def change_the_data(data_path, how):
    """`more_items`: weights no longer fit; `same_shape`: the same counts, other interactions (fit, but wrong)."""
    if how == "more_items":
        write_tiny_dataset(data_path, n_items=35)
    else:
        write_tiny_dataset(data_path, seed=1)


def not_a_checkpoint(folder, kind):
    path = pathlib.Path(folder) / f"{kind}.pth"
    if kind == "garbage":
        path.write_bytes(b"junk" * 10)
    elif kind == "foreign_pickle":  # a class the weights-only unpickler refuses
        torch.save({"state_dict": {}, "config": pathlib.PurePosixPath("x")}, path)
    elif kind == "weights_only":
        torch.save({"weight": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize("kind", ["garbage", "foreign_pickle", "weights_only", "missing"])
def test_resume_from_a_file_that_is_not_a_checkpoint(fast_run_config, tmp_path, capsys, kind):
    path = not_a_checkpoint(tmp_path, kind)
    assert cli.main(cli_args(fast_run_config, resume_checkpoint=path)) == 2
    error = one_line_error(capsys)
    assert f"{path}: " in error and ("not a RecBole checkpoint" in error or "no such checkpoint file" in error)


def test_resume_from_another_models_checkpoint(fast_run_config, sasrec_checkpoint, capsys):
    assert cli.main(cli_args(fast_run_config, model="GRU4Rec", resume_checkpoint=sasrec_checkpoint)) == 2
    error = one_line_error(capsys)
    assert f"{sasrec_checkpoint}: a checkpoint of SASRec, expected GRU4Rec" in error


def test_resume_with_other_settings_names_the_weight_that_does_not_fit(fast_run_config, sasrec_checkpoint, capsys):
    assert cli.main(cli_args(fast_run_config, hidden_size=32, resume_checkpoint=sasrec_checkpoint)) == 2
    error = one_line_error(capsys)
    assert f"{sasrec_checkpoint}: " in error and "item_embedding.weight" in error and "[31, 64]" in error


@pytest.mark.parametrize("how", ["more_items", "same_shape"])
def test_resume_after_the_data_changed(fast_run_config, sasrec_checkpoint, capsys, how):
    change_the_data(fast_run_config["data_path"], how)
    assert cli.main(cli_args(fast_run_config, epochs=2, resume_checkpoint=sasrec_checkpoint)) == 2
    error = one_line_error(capsys)
    assert f"{sasrec_checkpoint}: " in error and "other data" in error


@pytest.mark.parametrize("how", ["more_items", "same_shape"])
def test_evaluate_after_the_data_changed(fast_run_config, sasrec_checkpoint, capsys, how):
    change_the_data(fast_run_config["data_path"], how)
    assert evaluate.main(["--checkpoint", str(sasrec_checkpoint)]) == 2
    error = one_line_error(capsys)
    assert f"{sasrec_checkpoint}: " in error and "other data" in error


def test_evaluate_of_a_checkpoint_whose_weights_are_another_models(
    fast_run_config, sasrec_checkpoint, tmp_path, capsys
):
    state = torch.load(sasrec_checkpoint, map_location="cpu")
    gru = run("GRU4Rec", "tiny", config_dict=fast_run_config)
    state["state_dict"] = torch.load(gru["saved_model_file"], map_location="cpu")["state_dict"]
    mixed = tmp_path / "mixed.pth"
    torch.save(state, mixed)
    assert evaluate.main(["--checkpoint", str(mixed)]) == 2
    error = one_line_error(capsys)
    assert f"{mixed}: " in error and "weights of another model" in error


def test_evaluate_checks_its_overrides_types(sasrec_checkpoint, capsys):
    assert evaluate.main(["--checkpoint", str(sasrec_checkpoint), "--eval_batch_size=many"]) == 2
    assert "--eval_batch_size=many: expected int" in one_line_error(capsys)


@pytest.fixture
def tokenizer_checkpoint(fast_run_config, monkeypatch):
    monkeypatch.setattr(semantic, "load_sentence_encoder", lambda name, device="cpu": FakeEncoder())
    settings = {**fast_run_config, **STAGE_ONE}
    return pathlib.Path(run("PRORecTokenizer", "tiny", config_dict=settings)["saved_model_file"]), settings


@pytest.mark.parametrize("how", ["more_items", "same_shape"])
def test_tokenize_after_the_data_changed(fast_run_config, tokenizer_checkpoint, capsys, how):
    path, _ = tokenizer_checkpoint
    change_the_data(fast_run_config["data_path"], how)
    with pytest.raises(SystemExit) as exited:
        tokenize.main(["--checkpoint", str(path)])
    assert exited.value.code not in (0, None)
    error = str(exited.value.code)
    assert "\n" not in error and f"{path}: " in error and "other data" in error


@pytest.mark.parametrize("kind", ["garbage", "another_model"])
def test_tokenize_refuses_what_is_not_a_tokenizer_checkpoint(sasrec_checkpoint, tmp_path, kind):
    path = not_a_checkpoint(tmp_path, "garbage") if kind == "garbage" else sasrec_checkpoint
    expected = "not a RecBole checkpoint" if kind == "garbage" else "a checkpoint of SASRec, expected PRORecTokenizer"
    with pytest.raises(SystemExit, match=f"{path}: {expected}"):
        tokenize.main(["--checkpoint", str(path)])


@pytest.mark.parametrize("kind", ["garbage", "another_model", "changed_data"])
def test_stage_one_resume_through_tokenizer_config(
    fast_run_config, tokenizer_checkpoint, sasrec_checkpoint, tmp_path, capsys, kind
):
    path, settings = tokenizer_checkpoint
    if kind == "garbage":
        path = not_a_checkpoint(tmp_path, "garbage")
    elif kind == "another_model":
        path = sasrec_checkpoint
    else:
        change_the_data(fast_run_config["data_path"], "same_shape")
    stage_one = {key: settings[key] for key in ("code_levels", "codebook_size", "hidden_size", "inner_size")}
    stage_one["resume_checkpoint"] = str(path)
    stage_one["epochs"] = 2
    args = cli_args(
        fast_run_config,
        model="PRORec",
        semantic_model="fake",
        text_fields="[title, brand, categories]",
        tokenizer_config="{" + ", ".join(f"{k}: {v}" for k, v in stage_one.items()) + "}",
        cache_dir="other-cache",
    )
    assert cli.main(args) == 2
    error = one_line_error(capsys)
    expected = {
        "garbage": "not a RecBole checkpoint",
        "another_model": "a checkpoint of SASRec, expected PRORecTokenizer",
        "changed_data": "other data",
    }[kind]
    assert f"{path}: " in error and expected in error


def test_the_helper_loads_a_good_checkpoint_into_a_model(fast_run_config, sasrec_checkpoint):
    """`checkpoint.load_checkpoint` is the one entry point: validated, then loaded; the saved weights are there."""
    from recbole.data import create_dataset, data_preparation

    from recbole_prorec import checkpoint
    from recbole_prorec.quick_start import build_config
    from recbole_prorec.registry import get_model

    config = build_config("SASRec", "tiny", config_dict=fast_run_config)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("SASRec")(config, train_data.dataset)
    state = checkpoint.load_checkpoint(sasrec_checkpoint, model, config)
    assert state["epoch"] == 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["state_dict"][name])
