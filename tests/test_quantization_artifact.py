"""Contracts of ItemCodeArtifact: round trip, atomic files, validation, dataset mismatch errors."""

import json
import types

import numpy as np
import pytest

from recbole_prorec.quantization import ItemCodeArtifact, quantize

TOKENS = ["[PAD]", "i1", "i2", "i3"]


def fake_dataset(tokens):
    return types.SimpleNamespace(iid_field="item_id", field2id_token={"item_id": np.array(tokens)})


def make_artifact():
    codes = np.array([[-1, -1, -1], [0, 1, 0], [0, 1, 1], [2, 0, 0]], dtype=np.int64)
    embeddings = np.arange(12, dtype=np.float32).reshape(4, 3)
    embeddings[0] = 0
    config, stats = {"levels": 2, "source": "integrated"}, {"collision_rate_before": 0.5}
    return ItemCodeArtifact(codes, TOKENS, embeddings, config, stats)


def test_round_trip_keeps_every_field(tmp_path):
    artifact = make_artifact()
    prefix = artifact.save(tmp_path / "sub" / "codes")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["codes.json", "codes.npz"]  # no temp files left
    loaded = ItemCodeArtifact.load(tmp_path / "sub" / "codes.npz", dataset=fake_dataset(TOKENS))
    np.testing.assert_array_equal(loaded.codes, artifact.codes)
    np.testing.assert_array_equal(loaded.embeddings, artifact.embeddings)
    assert loaded.codes.dtype == np.int64 and loaded.embeddings.dtype == np.float32
    assert (loaded.item_tokens, loaded.config, loaded.stats) == (TOKENS, artifact.config, artifact.stats)
    assert loaded.codebook_sizes == [3, 2, 2]
    assert ItemCodeArtifact.load(prefix).item_tokens == TOKENS


def test_encoder_weights_round_trip_and_are_covered_by_the_digest(tmp_path):
    artifact = make_artifact()
    artifact.encoder = {"trm_encoder.layer.0.weight": np.ones((2, 3), dtype=np.float32)}
    prefix = artifact.save(tmp_path / "codes")
    loaded = ItemCodeArtifact.load(prefix)
    assert list(loaded.encoder) == ["trm_encoder.layer.0.weight"]
    np.testing.assert_array_equal(loaded.encoder["trm_encoder.layer.0.weight"], np.ones((2, 3)))
    meta = json.loads((tmp_path / "codes.json").read_text())
    artifact.encoder["trm_encoder.layer.0.weight"][0, 0] = 2.0  # other weights, same codes: another save
    artifact.save(tmp_path / "other")
    (tmp_path / "other.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="come from different saves"):
        ItemCodeArtifact.load(tmp_path / "other")


def test_from_quantization_prepends_the_pad_row(tmp_path):
    embeddings = np.random.default_rng(0).standard_normal((31, 4)).astype(np.float32)
    embeddings[0] = 0
    result = quantize(embeddings[1:], levels=2, codebook_size=4)
    tokens = ["[PAD]"] + [f"item{i}" for i in range(1, 31)]
    artifact = ItemCodeArtifact.from_quantization(result, tokens, embeddings, {"method": "rkmeans"})
    assert artifact.codes.shape == (31, 3) and (artifact.codes[0] == -1).all()
    artifact.save(tmp_path / "a")
    assert ItemCodeArtifact.load(tmp_path / "a").stats == json.loads(json.dumps(result.stats))


def test_different_tokens_name_the_first_mismatch(tmp_path):
    make_artifact().save(tmp_path / "a")
    with pytest.raises(ValueError, match=r"internal id 2: artifact token 'i2', dataset token 'x2'"):
        ItemCodeArtifact.load(tmp_path / "a", dataset=fake_dataset(["[PAD]", "i1", "x2", "x3"]))


def test_different_counts_are_named(tmp_path):
    make_artifact().save(tmp_path / "a")
    with pytest.raises(ValueError, match="has 4 items but the dataset has 5"):
        ItemCodeArtifact.load(tmp_path / "a", dataset=fake_dataset(TOKENS + ["i4"]))


def test_missing_arrays_are_named(tmp_path):
    make_artifact().save(tmp_path / "a")
    np.savez(tmp_path / "a.npz", codes=make_artifact().codes)
    with pytest.raises(ValueError, match=r"a\.npz: missing arrays \['embeddings'\]"):
        ItemCodeArtifact.load(tmp_path / "a")


def test_missing_file_and_mismatched_halves_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.npz"):
        ItemCodeArtifact.load(tmp_path / "nothing")
    make_artifact().save(tmp_path / "a")
    other = make_artifact()
    other.embeddings[1, 0] = 99.0
    np.savez(tmp_path / "a.npz", codes=other.codes, embeddings=other.embeddings)
    with pytest.raises(ValueError, match="different saves"):
        ItemCodeArtifact.load(tmp_path / "a")


def test_pickled_arrays_are_refused(tmp_path):
    make_artifact().save(tmp_path / "a")
    np.savez(tmp_path / "a.npz", codes=np.array([{"x": 1}], dtype=object), embeddings=make_artifact().embeddings)
    with pytest.raises(ValueError, match=r"a\.npz: not a readable pickle-free \.npz"):
        ItemCodeArtifact.load(tmp_path / "a")


@pytest.mark.parametrize(
    "codes, message",
    [
        (np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), "row 0 is the padding item"),
        (np.array([[-1, -1], [0, 1], [0, 1], [1, 1]]), "not unique"),
        (np.array([[-1, -1], [0, 1], [-3, 0], [1, 1]]), "first bad internal id 2"),
        (np.zeros((4, 2), dtype=np.float32), "integer"),
        (np.array([[-1, -1], [0, 1], [1, 1]]), "row counts differ"),
    ],
)
def test_invalid_artifacts_are_rejected(codes, message):
    with pytest.raises(ValueError, match=message):
        ItemCodeArtifact(codes, TOKENS, np.zeros((4, 3), dtype=np.float32))
