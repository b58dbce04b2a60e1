"""Reading and checking RecBole checkpoints: one helper for every option that takes one.

Why: `--resume_checkpoint`, `recbole_prorec.evaluate`, `recbole_prorec.tokenize`, the stage-1 resume through
`tokenizer_config` and serving all load a `.pth` given by a user. Loaded bare, a file that is not a checkpoint ends
in torch's unpickler error (paragraphs long), another model's checkpoint or one saved for other data in
`load_state_dict`'s `size mismatch` traceback, and a checkpoint whose dataset changed without changing its size
loads silently onto other item ids. Here each of these is a one-line `CheckpointError` naming the file.

Files are read with torch's weights-only unpickler and the allow-list of `compat` (never `weights_only=False`).
A checkpoint written by a run of this package carries `data_fingerprint` (`utils.data_fingerprint`: its atomic
files and the options that filter and split them), saved by `compat.save_checkpoints_with_protocol_2`; older ones
are checked by their weights' shapes alone.
"""

import pathlib
import pickle
import zipfile

from recbole_prorec import compat
from recbole_prorec.utils import data_fingerprint

DATA_FINGERPRINT = "data_fingerprint"
# What `Trainer.resume_checkpoint` reads besides the weights.
RESUME_KEYS = ("epoch", "cur_step", "best_valid_score", "optimizer")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, not a RecBole checkpoint, or not for this model or data; the message
    names the file and what was expected."""


def read_checkpoint(path, model=None, required=()):
    """The checkpoint's dict, checked: a RecBole checkpoint (`config`, `state_dict` and the `required` keys), of
    `model` (a name or class) when given. Raises `CheckpointError`."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = compat.load_checkpoint(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, KeyError, AttributeError) as error:
        reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0]  # torch's run on for paragraphs
        reason = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
        raise CheckpointError(f"{path}: not a RecBole checkpoint ({reason})") from None
    keys = ("config", "state_dict", *required)
    missing = [key for key in keys if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a RecBole checkpoint (no {', '.join(missing)}; expected a file saved by a run)"
        )
    try:
        saved_model = state["config"]["model"]
    except (TypeError, KeyError, IndexError):
        raise CheckpointError(f"{path}: not a RecBole checkpoint (its config names no model)") from None
    if model is not None:
        expected = model if isinstance(model, str) else model.__name__
        if saved_model != expected:
            raise CheckpointError(f"{path}: a checkpoint of {saved_model}, expected {expected}")
    return state


def check_data(state, path, config):
    """Refuse a checkpoint saved for other data than `config` reads now (files or filtering/split options).

    Skipped for a checkpoint without a fingerprint, or when the dataset's files are not where `config` looks
    (loading the dataset then reports that, naming the path).
    """
    saved = state.get(DATA_FINGERPRINT)
    folder = pathlib.Path(config["data_path"] or "")
    if not saved or not (folder / f"{config['dataset']}.inter").is_file():
        return
    if data_fingerprint(config) != saved:
        raise CheckpointError(
            f"{path}: trained on other data: the atomic files in {folder}/ or the options that filter and split them "
            "(utils.DATA_KEYS) changed since it was saved; its item ids would point at other items: train again"
        )


def check_weights(state, path, model):
    """Refuse weights that do not fit `model` (other parameter names: another model; other shapes: other settings
    or other data), naming the first parameters that differ, before `load_state_dict` raises a traceback."""
    saved, expected = state["state_dict"], model.state_dict()
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: not a RecBole checkpoint (its state_dict is a {type(saved).__name__})")
    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected]
    name = type(model).__name__
    if missing or unexpected:
        parts = ([f"missing {_first(missing)}"] if missing else []) + (
            [f"unexpected {_first(unexpected)}"] if unexpected else []
        )
        raise CheckpointError(f"{path}: weights of another model than {name} as configured ({'; '.join(parts)})")
    for key, value in expected.items():
        if tuple(saved[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: saved with other settings or other data than this {name}: {key} is "
                f"{list(saved[key].shape)} there, {list(value.shape)} here"
            )


def _first(names, shown=3):
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def load_checkpoint(path, model, config=None):
    """Load `path` into `model` after every check above (`config`: the run's, for the data check); returns the
    checkpoint's dict. The one entry point for code that loads a checkpoint into a model it built."""
    state = read_checkpoint(path, model=type(model).__name__)
    if config is not None:
        check_data(state, path, config)
    check_weights(state, path, model)
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(state.get("other_parameter"))
    return state
