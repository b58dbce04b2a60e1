"""Malformed inputs to the converters and to a run: each a one-line error naming the file or key, or a documented
fallback, and nothing already written is lost (issue #13)."""

import logging
import pathlib

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset
from recbole.data import create_dataset, data_preparation
from test_quantization_artifact import make_artifact
from test_semantic import fake_dataset

from recbole_prorec import cli, evaluate, semantic, tokenize
from recbole_prorec.data import ConversionError, convert
from recbole_prorec.quantization import ItemCodeArtifact
from recbole_prorec.quick_start import build_config
from recbole_prorec.registry import get_model
from recbole_prorec.trainer import ScheduledTrainer


@pytest.mark.parametrize("suffix", ["", ".npz", ".json"])
def test_artifact_of_another_dataset_is_a_one_line_cli_error(fast_run_config, capsys, suffix):
    """Stage 2 given another dataset's item codes stops before training, naming the artifact (given as `x`,
    `x.npz` or `x.json`, as TIGER accepts it)."""
    codes = np.array([[-1, -1], [0, 0], [0, 1], [1, 0], [1, 1], [2, 0]])
    other = ["[PAD]", *(f"B00{i}" for i in range(5))]
    prefix = ItemCodeArtifact(codes, other, np.ones((6, 4), dtype=np.float32)).save("other-dataset")
    overrides = [f"--{key}={value}" for key, value in fast_run_config.items()]
    given = f"--tokenizer_artifact={prefix}{suffix}"
    assert cli.main(["--model=PRORec", "--dataset=tiny", given, *overrides]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert f"item-code artifact {prefix} has 6 items but the dataset has 31" in error and "another dataset" in error


def test_missing_tokenizer_artifact_is_a_one_line_cli_error(fast_run_config, capsys):
    overrides = [f"--{key}={value}" for key, value in fast_run_config.items()]
    assert cli.main(["--model=PRORec", "--dataset=tiny", "--tokenizer_artifact=nowhere/codes.npz", *overrides]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "tokenizer_artifact: no file nowhere/codes.npz" in error


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing", "not_recbole"])
def test_corrupt_checkpoint_is_named_by_evaluate_and_tokenize(tmp_path, capsys, damage):
    """A damaged or foreign .pth is a one-line error of both checkpoint CLIs, not a torch traceback."""
    path = tmp_path / "model.pth"
    torch.save({"config": {}, "state_dict": {"weight": torch.zeros(1000)}, "epoch": 0}, path)
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "not_recbole":
        torch.save({"weight": torch.zeros(3)}, path)
    else:
        path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"junk" * 10, "empty": b""}[damage])
    expected = "no such checkpoint file" if damage == "missing" else "not a RecBole checkpoint"
    assert evaluate.main(["--checkpoint", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"{path}: {expected}" in error
    with pytest.raises(SystemExit, match=f"{path}: {expected}"):
        tokenize.main(["--checkpoint", str(path)])


def test_items_without_any_text_are_encoded_by_id_with_a_warning(tmp_path, caplog):
    """Documented fallback (README, `item_texts`): every item without text becomes `item <raw id>`."""
    dataset = fake_dataset(tmp_path, ["a\t\t\t", "b\t\t\t", "c\t\t\t"])  # a conversion without metadata
    with caplog.at_level(logging.WARNING, logger="recbole_prorec.semantic"):
        texts = semantic.item_texts(dataset, ["title", "brand", "categories"])
    assert texts == ["", "item a", "item b", "item c"]
    assert "3 of 3 items have no text" in caplog.text and "tiny.item" in caplog.text


def test_empty_item_file_is_an_error_and_header_only_falls_back_to_ids(tmp_path, caplog):
    """A zero-byte .item has no header to name its columns; a header without rows is items without text."""
    dataset = fake_dataset(tmp_path, [])
    with caplog.at_level(logging.WARNING, logger="recbole_prorec.semantic"):
        assert semantic.item_texts(dataset, ["title"]) == ["", "item a", "item b", "item c"]
    item_file = semantic.item_file_path(dataset)
    item_file.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{item_file}: empty file; expected a header line"):
        semantic.item_texts(dataset, ["title"])


def test_nan_training_loss_names_the_epoch_and_saves_nothing(fast_run_config, monkeypatch):
    """RecBole's check is kept (and covers inf too); the message says where and what to try."""
    config = build_config("SASRec", "tiny", config_dict=fast_run_config)
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    model = get_model("SASRec")(config, train_data.dataset)
    monkeypatch.setattr(model, "calculate_loss", lambda interaction: torch.tensor(float("nan"), requires_grad=True))
    trainer = ScheduledTrainer(config, model)
    with pytest.raises(ValueError, match=r"Training loss is nan in epoch 0 of SASRec \(learning_rate 0.001"):
        trainer.fit(train_data, valid_data, show_progress=False)
    assert not pathlib.Path(trainer.saved_model_file).exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "json_not_utf8"])
def test_unreadable_artifact_files_are_named(tmp_path, damage):
    prefix = make_artifact().save(tmp_path / "a")
    npz, json_file = tmp_path / "a.npz", tmp_path / "a.json"
    if damage == "json_not_utf8":
        json_file.write_bytes(b"\xff\xfe{}")
    else:
        data = npz.read_bytes()
        npz.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"junk" * 10}[damage])
    bad = json_file if damage == "json_not_utf8" else npz
    with pytest.raises(ValueError, match=rf"{bad}: not (a readable pickle-free \.npz|UTF-8 text)"):
        ItemCodeArtifact.load(prefix)


def test_artifact_with_nan_embeddings_is_refused_on_load(tmp_path):
    """NaN distillation targets would surface epochs later as a NaN loss; the artifact names the item instead."""
    artifact = make_artifact()
    artifact.embeddings[2, 1] = np.nan
    prefix = artifact.save(tmp_path / "a")
    with pytest.raises(ValueError, match=r"a\.npz: embeddings must be finite; first NaN/inf at internal id 2"):
        ItemCodeArtifact.load(prefix)


def test_p5_user_on_two_lines_is_named_or_skipped(tmp_path):
    """Positions restart on a user's second line and would interleave with the first line's in the time sort."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "user_sequence.txt").write_text("u1 a b c\nu2 a c\nu1 d e\n")
    with pytest.raises(ConversionError, match=r"user_sequence.txt, line 3: .*user 'u1' already had a line"):
        convert(raw, tmp_path / "out", "x")
    assert not (tmp_path / "out").exists()
    stats = convert(raw, tmp_path / "out", "x", skip_malformed=True)
    assert stats.skipped_lines == 1
    rows = (tmp_path / "out" / "x" / "x.inter").read_text().splitlines()[1:]
    assert [row.split("\t")[1] for row in rows if row.startswith("u1\t")] == ["a", "b", "c"]


def test_repeated_item_id_in_item_file_keeps_the_first_row_with_a_warning(tmp_path, caplog):
    dataset = fake_dataset(tmp_path, ["a\tFirst\t\t", "b\tSoap\t\t", "a\tSecond\t\t", "c\tLipstick\t\t"])
    with caplog.at_level(logging.WARNING, logger="recbole_prorec.semantic"):
        texts = semantic.item_texts(dataset, ["title"])
    assert texts[1] == "title: First"
    assert f"{semantic.item_file_path(dataset)}: 1 item id(s) have several rows (e.g. a)" in caplog.text


def test_non_numeric_timestamp_in_inter_file_names_the_file_and_column(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inter = write_tiny_dataset(tmp_path) / "tiny.inter"
    header, first, *rest = inter.read_text().splitlines()
    inter.write_text("\n".join([header, first.rsplit("\t", 1)[0] + "\tyesterday", *rest]) + "\n")
    config = build_config("SASRec", "tiny", config_dict={"data_path": str(tmp_path), "use_gpu": False})
    with pytest.raises(ValueError, match=rf"{inter}: Unable to convert column timestamp:float"):
        create_dataset(config)
