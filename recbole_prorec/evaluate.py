"""Evaluate a saved checkpoint of any model (ours or RecBole's) on the validation and test splits.

    python -m recbole_prorec.evaluate --checkpoint saved/SASRec-X.pth [--key=value ...]

RecBole's own `load_data_and_model` resolves the model by name and fails for plugin classes; this one uses
`get_model`. Useful for a run that was interrupted before early stopping: its best checkpoint so far is tested
under the same protocol, and the same file resumes training with `--resume_checkpoint`.
"""

import argparse
import json
import pathlib
import pickle
import sys
import zipfile

import torch
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import init_seed

from recbole_prorec import compat
from recbole_prorec.compat import load_checkpoint
from recbole_prorec.registry import get_model


class CheckpointError(ValueError):
    """A checkpoint file that is missing or not a readable RecBole checkpoint; the message names the file."""


def read_checkpoint(checkpoint):
    """The checkpoint's dict, or a one-line `CheckpointError` for a missing, truncated or foreign file."""
    path = pathlib.Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = load_checkpoint(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, KeyError) as error:
        reason = str(error).split(". ")[0]  # torch's zip errors run on for several sentences
        raise CheckpointError(f"{path}: not a RecBole checkpoint ({type(error).__name__}: {reason})") from None
    missing = [key for key in ("config", "state_dict") if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path}: not a RecBole checkpoint (no {missing}; expected a file saved by a run)")
    return state


def load_data_and_model(checkpoint, overrides=None):
    """`(config, model, dataset, (train, valid, test))` rebuilt from a RecBole checkpoint, on the CPU.

    `overrides` update the saved config (e.g. a `data_path` that moved). The model holds the saved weights.
    """
    compat.apply()
    state = read_checkpoint(checkpoint)
    config = state["config"]
    for key, value in (overrides or {}).items():
        config[key] = value
    config["device"] = torch.device("cpu")
    if config["torch_threads"]:
        torch.set_num_threads(int(config["torch_threads"]))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    splits = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, splits[0].dataset)
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(state.get("other_parameter"))
    return config, model.eval(), dataset, splits


def evaluate_checkpoint(checkpoint, overrides=None):
    """Validation and test metrics of a checkpoint, with the epoch it was saved at."""
    config, model, _, (_, valid_data, test_data) = load_data_and_model(checkpoint, overrides)
    trainer = Trainer(config, model)
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "epoch": read_checkpoint(checkpoint)["epoch"],
        "valid_result": dict(trainer.evaluate(valid_data, load_best_model=False)),
        "test_result": dict(trainer.evaluate(test_data, load_best_model=False)),
    }


def main(argv=None):
    from recbole_prorec.cli import parse_overrides

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="RecBole checkpoint (.pth)")
    args, extra = parser.parse_known_args(argv)
    try:
        result = evaluate_checkpoint(args.checkpoint, parse_overrides(extra))
    except (ValueError, FileNotFoundError) as error:  # CheckpointError, an artifact or dataset that does not fit
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
