"""Evaluate a saved checkpoint of any model (ours or RecBole's) on the validation and test splits.

    python -m recbole_prorec.evaluate --checkpoint saved/SASRec-X.pth [--key=value ...]

RecBole's own `load_data_and_model` resolves the model by name and fails for plugin classes; this one uses
`get_model`. Useful for a run that was interrupted before early stopping: its best checkpoint so far is tested
under the same protocol, and the same file resumes training with `--resume_checkpoint`.
"""

import argparse
import json
import sys

import torch
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import init_seed

from recbole_prorec import compat
from recbole_prorec.checkpoint import CheckpointError, check_data, check_weights, read_checkpoint
from recbole_prorec.registry import get_model

__all__ = ["CheckpointError", "evaluate_checkpoint", "load_data_and_model", "read_checkpoint"]


def load_data_and_model(checkpoint, overrides=None, model=None):
    """`(config, model, dataset, (train, valid, test))` rebuilt from a RecBole checkpoint, on the CPU.

    `overrides` update the saved config (e.g. a `data_path` that moved); `model` (a name or class), when given,
    is the model the checkpoint must be of. The model holds the saved weights. A file that is not a checkpoint,
    of another model, or saved for other data than the dataset holds now is a one-line `CheckpointError`,
    raised before the dataset is built where the file alone shows it.
    """
    compat.apply()
    state = read_checkpoint(checkpoint, model=model)
    config = state["config"]
    for key, value in (overrides or {}).items():
        config[key] = value
    config["device"] = torch.device("cpu")
    try:
        model_class = get_model(config["model"])
    except ValueError:
        raise CheckpointError(
            f"{checkpoint}: a checkpoint of {config['model']}, a model this package does not know"
        ) from None
    check_data(state, checkpoint, config)
    if config["torch_threads"]:
        torch.set_num_threads(int(config["torch_threads"]))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    splits = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    recommender = model_class(config, splits[0].dataset)
    check_weights(state, checkpoint, recommender)
    recommender.load_state_dict(state["state_dict"])
    recommender.load_other_parameter(state.get("other_parameter"))
    return config, recommender.eval(), dataset, splits


def evaluate_checkpoint(checkpoint, overrides=None):
    """Validation and test metrics of a checkpoint, with the epoch it was saved at."""
    config, model, _, (_, valid_data, test_data) = load_data_and_model(checkpoint, overrides)
    trainer = Trainer(config, model)
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "epoch": read_checkpoint(checkpoint).get("epoch"),
        "valid_result": dict(trainer.evaluate(valid_data, load_best_model=False)),
        "test_result": dict(trainer.evaluate(test_data, load_best_model=False)),
    }


def main(argv=None):
    from recbole_prorec.cli import parse_overrides
    from recbole_prorec.options import check_overrides

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="RecBole checkpoint (.pth)")
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = parse_overrides(extra)
        if overrides:  # checked against the types of the checkpoint's own model
            saved = read_checkpoint(args.checkpoint)["config"]
            overrides = check_overrides(saved["model"], saved["dataset"], overrides)
        result = evaluate_checkpoint(args.checkpoint, overrides)
    except (ValueError, FileNotFoundError) as error:  # CheckpointError, an artifact or dataset that does not fit
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
