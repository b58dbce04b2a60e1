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
