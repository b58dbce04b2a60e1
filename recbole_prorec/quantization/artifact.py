"""The item-code artifact: stage 1's output and stage 2's input, keyed to RecBole's internal item ids.

Stored as ``<path>.npz`` (``codes``, ``embeddings``, and ``encoder/<name>`` for each weight of stage 1's
sequence encoder when the artifact carries one; loaded with ``allow_pickle=False``) and ``<path>.json``
(``item_tokens``, ``config``, ``stats`` and a digest of the arrays, so a half-finished save is detected).
Each file is written to a temporary file and moved into place (``utils.write_atomically``).
"""

import dataclasses
import hashlib
import io
import json
import pathlib
import zipfile

import numpy as np

from recbole_prorec.utils import write_atomically

ARRAYS = ("codes", "embeddings")
JSON_KEYS = ("item_tokens", "config", "stats", "arrays_sha256")
ENCODER_PREFIX = "encoder/"
PAD_TOKEN = "[PAD]"


def artifact_prefix(path):
    """``x``, ``x.npz`` and ``x.json`` all name the artifact ``x``."""
    path = pathlib.Path(path)
    return path.with_suffix("") if path.suffix in (".npz", ".json") else path


def _artifact_files(path):
    """``(prefix, <prefix>.npz, <prefix>.json)``: the two files an artifact is saved as."""
    prefix = artifact_prefix(path)
    return prefix, prefix.with_name(prefix.name + ".npz"), prefix.with_name(prefix.name + ".json")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"artifact config/stats value of type {type(value).__name__} is not JSON serializable: {value!r}")


def _digest(codes, embeddings, encoder):
    h = hashlib.sha256()
    for array in (codes, embeddings, *(encoder[name] for name in sorted(encoder))):
        h.update(str(array.shape).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _read_meta(json_path):
    """The artifact's JSON with every key of ``JSON_KEYS``; ``ValueError`` naming the file otherwise."""
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{json_path}: not UTF-8 text ({e.reason} at byte {e.start}); rebuild it") from e
    missing = [k for k in JSON_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(f"{json_path}: missing keys {missing}; an item-code artifact's JSON has {list(JSON_KEYS)}")
    return meta


def recorded_digest(path):
    """The arrays sha256 an artifact's JSON records (which codes it holds), read without loading the arrays."""
    _, _, json_path = _artifact_files(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"item-code artifact file {json_path} not found")
    return _read_meta(json_path)["arrays_sha256"]


@dataclasses.dataclass(eq=False)
class ItemCodeArtifact:
    """Item codes and integrated embeddings in RecBole's internal item order (row 0 = ``[PAD]``).

    ``codes`` int64 ``[item_num, L]`` with row 0 all -1 and the other rows distinct and non-negative;
    ``item_tokens`` the raw item tokens (``dataset.field2id_token[iid_field]``); ``embeddings`` finite float32
    ``[item_num, d]`` (row 0 zeros), the pre-quantization embeddings; ``config`` and ``stats`` JSON-ready dicts;
    ``encoder`` the weights of the stage-1 sequence encoder by parameter name (float32 arrays; empty when the
    codes did not come from a trained sequence model), which a stage-2 model can start from (``warm_start``).
    """

    codes: np.ndarray
    item_tokens: list
    embeddings: np.ndarray
    config: dict = dataclasses.field(default_factory=dict)
    stats: dict = dataclasses.field(default_factory=dict)
    encoder: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        codes, embeddings = np.asarray(self.codes), np.asarray(self.embeddings)
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be a 2-D integer array [item_num, L], got {codes.dtype} {codes.shape}")
        if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
            raise ValueError(
                f"embeddings must be a 2-D float array [item_num, d], got {embeddings.dtype} {embeddings.shape}"
            )
        n = codes.shape[0]
        if n < 1:
            raise ValueError(f"an artifact has at least the {PAD_TOKEN} row; got no rows")
        if embeddings.shape[0] != n or len(self.item_tokens) != n:
            raise ValueError(
                f"row counts differ: codes {n}, embeddings {embeddings.shape[0]}, item_tokens {len(self.item_tokens)}"
            )
        not_finite = np.flatnonzero(~np.isfinite(embeddings).all(1))
        if not_finite.size:  # they are distillation targets: one NaN makes every training loss NaN
            raise ValueError(f"embeddings must be finite; first NaN/inf at internal id {not_finite[0]}")
        if not (codes[0] == -1).all():
            raise ValueError(f"codes row 0 is the padding item and must be all -1, got {codes[0].tolist()}")
        negative = np.flatnonzero((codes[1:] < 0).any(1))
        if negative.size:
            raise ValueError(f"codes of real items must be >= 0; first bad internal id {negative[0] + 1}")
        if np.unique(codes[1:], axis=0).shape[0] != n - 1:
            raise ValueError("codes are not unique per item; add a collision level (quantization.add_collision_level)")
        self.codes = codes.astype(np.int64, copy=False)
        self.embeddings = embeddings.astype(np.float32, copy=False)
        self.item_tokens = [str(t) for t in self.item_tokens]
        self.encoder = {str(name): np.asarray(value, dtype=np.float32) for name, value in self.encoder.items()}

    @classmethod
    def from_quantization(cls, result, item_tokens, embeddings, config=None, encoder=None):
        """Artifact from a ``QuantizationResult`` over items 1..n; prepends the ``[PAD]`` row of -1 codes."""
        pad = np.full((1, result.codes.shape[1]), -1, dtype=np.int64)
        codes = np.concatenate([pad, result.codes])
        return cls(codes, list(item_tokens), embeddings, dict(config or {}), result.stats, dict(encoder or {}))

    @property
    def digest(self):
        """sha256 (hex) of every array: what a stage-2 checkpoint records to recognise the codes it was trained on."""
        return _digest(self.codes, self.embeddings, self.encoder)

    @property
    def codebook_sizes(self):
        """Vocabulary size per code level (max code + 1 per column; the last is the collision level)."""
        return [int(c) + 1 for c in self.codes.max(0)]

    def save(self, path):
        """Write ``<path>.npz`` and ``<path>.json`` atomically; returns the path prefix."""
        prefix, npz_path, json_path = _artifact_files(path)
        meta = {
            "item_tokens": self.item_tokens,
            "config": self.config,
            "stats": self.stats,
            "arrays_sha256": self.digest,
        }
        text = json.dumps(meta, default=_json_default, indent=1).encode()  # serialise first: fail before writing
        arrays = io.BytesIO()
        encoder = {ENCODER_PREFIX + name: value for name, value in self.encoder.items()}
        np.savez(arrays, codes=self.codes, embeddings=self.embeddings, **encoder)
        write_atomically(npz_path, arrays.getvalue())
        write_atomically(json_path, text)
        return prefix

    @classmethod
    def load(cls, path, dataset=None):
        """Read an artifact saved by ``save``; with ``dataset``, check it holds exactly the dataset's items."""
        prefix, npz_path, json_path = _artifact_files(path)
        for p in (npz_path, json_path):
            if not p.is_file():
                raise FileNotFoundError(f"item-code artifact file {p} not found (expected {npz_path} + {json_path})")
        try:
            with np.load(npz_path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in ARRAYS if k in npz.files}
                encoder = {k[len(ENCODER_PREFIX) :]: npz[k] for k in npz.files if k.startswith(ENCODER_PREFIX)}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:  # EOFError: an empty file
            raise ValueError(f"{npz_path}: not a readable pickle-free .npz ({e}); rebuild it") from e
        missing = [k for k in ARRAYS if k not in arrays]
        if missing:
            raise ValueError(f"{npz_path}: missing arrays {missing}; an item-code artifact holds {list(ARRAYS)}")
        codes, embeddings = arrays["codes"], arrays["embeddings"]
        meta = _read_meta(json_path)
        if meta["arrays_sha256"] != _digest(codes, embeddings, encoder):
            raise ValueError(f"{npz_path} and {json_path} come from different saves (interrupted write?): rebuild it")
        try:
            artifact = cls(codes, meta["item_tokens"], embeddings, meta["config"], meta["stats"], encoder)
        except ValueError as e:
            raise ValueError(f"{npz_path}: {e}") from e
        if dataset is not None:
            artifact.check_items(dataset.field2id_token[dataset.iid_field], f"item-code artifact {prefix}")
        return artifact

    def check_items(self, item_tokens, name="item-code artifact"):
        """Raise ``ValueError`` naming the count mismatch or the first differing internal id and its tokens."""
        item_tokens = [str(t) for t in item_tokens]
        if len(item_tokens) != len(self.item_tokens):
            raise ValueError(
                f"{name} has {len(self.item_tokens)} items but the dataset has {len(item_tokens)} (both counting "
                f"{PAD_TOKEN}); it was built for another dataset or filtering: rebuild it"
            )
        mismatch = np.flatnonzero(np.asarray(item_tokens, dtype=object) != np.asarray(self.item_tokens, dtype=object))
        if mismatch.size:
            i = int(mismatch[0])
            raise ValueError(
                f"{name} does not match the dataset's item order: first difference at internal id {i}: artifact "
                f"token {self.item_tokens[i]!r}, dataset token {item_tokens[i]!r} ({mismatch.size} ids differ); "
                "rebuild it"
            )
