"""Item text assembly and the cached semantic encoder (recbole_prorec.semantic)."""

import hashlib
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recbole_prorec import semantic

ITEM_HEADER = "item_id:token\ttitle:token_seq\tbrand:token_seq\tcategories:token_seq"


class FakeEncoder:
    """Stands in for a sentence-transformers model: a fixed random vector per text; counts calls."""

    calls = 0

    def encode(self, texts, batch_size, show_progress_bar, convert_to_numpy):
        FakeEncoder.calls += 1
        seeds = [int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) for text in texts]
        return np.stack([np.random.default_rng(seed).standard_normal(8) for seed in seeds])


@pytest.fixture
def fake_encoder(monkeypatch):
    FakeEncoder.calls = 0
    loaded = []
    monkeypatch.setattr(
        semantic, "load_sentence_encoder", lambda name, device="cpu": loaded.append(name) or FakeEncoder()
    )
    return loaded


def fake_dataset(folder, item_rows, tokens=("a", "b", "c")):
    """The attributes of a RecBole dataset that item text needs, over a real .item file."""
    (folder / "tiny").mkdir()
    (folder / "tiny" / "tiny.item").write_text("\n".join([ITEM_HEADER, *item_rows]) + "\n", encoding="utf-8")
    id_tokens = np.array(["[PAD]", *tokens])
    return SimpleNamespace(
        dataset_path=str(folder / "tiny"),
        dataset_name="tiny",
        iid_field="item_id",
        item_num=len(id_tokens),
        field2id_token={"item_id": id_tokens},
        field2token_id={"item_id": {t: i for i, t in enumerate(id_tokens)}},
    )


def config(folder, model="fake-model"):
    return {
        "text_fields": ["title", "brand", "categories"],
        "semantic_model": model,
        "semantic_batch_size": 2,
        "cache_dir": str(folder / "cache"),
        "device": "cpu",
    }


def test_item_texts_follow_internal_ids_unescape_html_and_skip_empty_fields(tmp_path):
    dataset = fake_dataset(
        tmp_path,
        [
            "c\tLip &amp; Cheek\t\tBeauty > Makeup > Lips | Beauty > Face",
            "a\tShampoo\tAcme\t",
            "zz\tNot in the dataset\t\t",
            "b\tSoap\tAcme\tBeauty",
        ],
    )
    texts = semantic.item_texts(dataset, ["title", "brand", "categories"])
    assert texts == [
        "",
        "title: Shampoo; brand: Acme",
        "title: Soap; brand: Acme; categories: Beauty",
        "title: Lip & Cheek; categories: Beauty > Makeup > Lips | Beauty > Face",
    ]


def test_items_without_text_get_their_id_and_a_warning_with_the_count(tmp_path, caplog):
    dataset = fake_dataset(tmp_path, ["a\tShampoo\t\t", "b\t\t\t"])  # c has no row at all
    with caplog.at_level(logging.WARNING, logger="recbole_prorec.semantic"):
        texts = semantic.item_texts(dataset, ["title", "brand"])
    assert texts[2:] == ["item b", "item c"]
    assert "2 of 3 items have no text" in caplog.text


def test_unknown_text_field_names_the_file_and_its_columns(tmp_path):
    dataset = fake_dataset(tmp_path, ["a\tShampoo\t\t"])
    with pytest.raises(ValueError, match=r"tiny\.item.*\['description'\].*available columns"):
        semantic.item_texts(dataset, ["title", "description"])


def test_embeddings_have_a_zero_padding_row_and_come_from_the_cache_the_second_time(tmp_path, fake_encoder):
    dataset = fake_dataset(tmp_path, ["a\tShampoo\t\t", "b\tSoap\t\t", "c\tLipstick\t\t"])
    first = semantic.semantic_embeddings(dataset, config(tmp_path))
    second = semantic.semantic_embeddings(dataset, config(tmp_path))
    assert first.shape == (4, 8) and first.dtype == torch.float32
    assert torch.equal(first[0], torch.zeros(8)) and first[1:].abs().sum() > 0
    assert torch.equal(first, second)
    assert FakeEncoder.calls == 1
    assert len(list((tmp_path / "cache" / "semantic").glob("*.npy"))) == 1


def test_changed_text_or_model_misses_the_cache(tmp_path, fake_encoder):
    cache = tmp_path / "cache"
    semantic.encode_texts(["title: Soap"], "model-a", 2, cache)
    semantic.encode_texts(["title: Soap!"], "model-a", 2, cache)
    semantic.encode_texts(["title: Soap"], "model-b", 2, cache)
    semantic.encode_texts(["title: Soap"], "model-a", 2, cache)
    assert FakeEncoder.calls == 3
    assert fake_encoder == ["model-a", "model-a", "model-b"]
    assert len(list(cache.glob("*.npy"))) == 3


def test_bundled_minilm_encodes_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = semantic.load_sentence_encoder("all-MiniLM-L6-v2")
    embeddings = encoder.encode(
        ["a red lipstick", "a hammer"], batch_size=2, show_progress_bar=False, convert_to_numpy=True
    )
    assert embeddings.shape == (2, 384)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-4)
