"""Paths, hashes and atomic writes shared by the models, the CLI, the tuner and the benchmarks."""

import hashlib
import json
import os
import pathlib
import tempfile

PROPERTIES_DIR = pathlib.Path(__file__).resolve().parent.parent / "properties"


def settings_digest(settings):
    """Short stable hash of a settings dict: names cached artifacts and identifies configs in results."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


# Options that decide which interactions a run sees and how they are split: part of every cache key.
DATA_KEYS = (
    "load_col",
    "eval_args",
    "user_inter_num_interval",
    "item_inter_num_interval",
    "val_interval",
    "rm_dup_inter",
    "filter_inter_by_user_or_item",
    "MAX_ITEM_LIST_LENGTH",
    "USER_ID_FIELD",
    "ITEM_ID_FIELD",
    "TIME_FIELD",
)


def data_fingerprint(config):
    """sha256 of the dataset's atomic files (`.inter`, `.item`) and of the options that filter and split them.

    Caches keyed by options alone would hand a run the codes of a dataset file that has since changed; with this
    in the key, a changed file (or split) gives a new artifact.
    """
    folder = pathlib.Path(config["data_path"])
    digest = hashlib.sha256()
    for suffix in ("inter", "item"):
        path = folder / f"{config['dataset']}.{suffix}"
        digest.update(f"{suffix}:".encode())
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    options = {key: config[key] for key in DATA_KEYS}
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cache_dir(config):
    """Folder for semantic embeddings and item-code artifacts, created on demand.

    Kept apart from the dataset folder, which may be read-only (RecBole's bundled ml-100k lives in site-packages).
    """
    path = pathlib.Path(config["cache_dir"] or "saved/cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomically(path, data):
    """Write text or bytes to `path` through a temporary file in the same folder: a crash never leaves half a file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
