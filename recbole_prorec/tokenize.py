"""Rebuild a PRORecTokenizer item-code artifact from a saved checkpoint, without retraining.

    python -m recbole_prorec.tokenize --checkpoint saved/PRORecTokenizer-X.pth [--code_source concat]
        [--quantizer rqvae] [--code_levels 32] [--output PATH_PREFIX]

Useful to write the code sources (integrated / collaborative / semantic / concat), quantizers and code lengths
of an ablation from one trained stage-1 model: none of these options changes stage-1 training, only what is
quantized and how. Without ``--output`` the artifact goes where a PRORec run with those stage-1 settings looks for it.
The checkpoint's config is reused, so run from the folder the training ran in (``data_path`` and
``cache_dir`` are usually relative).
"""

import argparse
import json
import logging

from recbole_prorec.evaluate import load_data_and_model
from recbole_prorec.model.tokenizer import CODE_SOURCES, PRORecTokenizer
from recbole_prorec.quantization.quantizer import METHODS


def load_tokenizer(checkpoint, overrides=None):
    """``(model, dataset)`` from a RecBole checkpoint of PRORecTokenizer; ``overrides`` update its config.

    Another model's checkpoint, or one saved for other data, is a one-line ``CheckpointError`` (a ValueError)."""
    _, model, dataset, _ = load_data_and_model(checkpoint, overrides, model=PRORecTokenizer)
    return model, dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="RecBole checkpoint (.pth) of PRORecTokenizer")
    parser.add_argument("--code_source", choices=CODE_SOURCES, help="override the checkpoint's code_source")
    parser.add_argument("--quantizer", choices=METHODS, help="override the checkpoint's quantizer")
    parser.add_argument("--code_levels", type=int, help="override the checkpoint's code_levels (digits with pq)")
    parser.add_argument("--output", help="artifact path prefix (default: under cache_dir, keyed by config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {key: getattr(args, key) for key in ("code_source", "quantizer", "code_levels") if getattr(args, key)}
    if overrides:  # the checkpoint's own artifact_path holds its own codes: key the new ones by their settings
        overrides["artifact_path"] = None
    if args.output:
        overrides["artifact_path"] = args.output
    try:
        model, dataset = load_tokenizer(args.checkpoint, overrides)
    except (ValueError, FileNotFoundError) as error:  # CheckpointError, another model's checkpoint, a moved dataset
        raise SystemExit(f"error: {error}") from None
    result = model.on_training_end(dataset)
    print(
        json.dumps(
            {
                "path": result["path"],
                "collision_rate_before": result["stats"]["collision_rate_before"],
                "utilization": result["stats"]["utilization"],
            },
            indent=1,
        )
    )
    return result


if __name__ == "__main__":
    main()
