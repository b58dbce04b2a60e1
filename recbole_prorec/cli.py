"""Command line with RecBole's flags: --model, --dataset, --config_files, and any --key=value override.

Values are parsed as YAML (`--topk=[5,10]`, `--learning_rate=1e-3`, `--bf16=false`), never with `eval`, and
checked against the type each option's YAML default documents before anything runs (`recbole_prorec.options`).
"""

import argparse
import json
import sys

import yaml

from recbole_prorec.options import OptionError, check_overrides, check_writable
from recbole_prorec.quick_start import run
from recbole_prorec.utils import write_atomically


def parse_value(text):
    """YAML scalar or list; `1e-3`, which YAML 1.1 leaves a string, becomes a float; text that is not YAML stays
    text (RecBole's intervals such as `[5,inf)`), and the option's type check refuses it where text is wrong."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(extra_args):
    """`--key=value` pairs (or `--key value`) as a dict with YAML-typed values; anything else is an error."""
    overrides, pending_key = {}, None
    for arg in extra_args:
        if pending_key is not None:
            overrides[pending_key], pending_key = parse_value(arg), None
        elif arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            overrides[key] = parse_value(value)
        elif arg.startswith("--"):
            pending_key = arg[2:]
        else:
            raise OptionError(f"Unrecognized argument '{arg}': overrides are written --key=value")
    if pending_key is not None:
        raise OptionError(f"Option --{pending_key} has no value: write --{pending_key}=VALUE")
    return overrides


def format_results(result):
    """Best-valid and test metrics side by side, one metric per line (test `nan` for a run that was not tested,
    such as a stage 1 trained inside a tuning trial)."""
    valid, test = result["best_valid_result"], result["test_result"]
    lines = [f"{'metric':<12}{'valid':>10}{'test':>10}"]
    lines += [
        f"{metric:<12}{valid.get(metric, float('nan')):>10.4f}{test.get(metric, float('nan')):>10.4f}"
        for metric in (test or valid)
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", "-m", default="PRORec", help="ours (PRORec, PRORecTokenizer, TIGER, ...) or RecBole's"
    )
    parser.add_argument("--dataset", "-d", default="ml-100k", help="a folder of atomic files under data_path")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files, applied after ours")
    parser.add_argument("--json", default=None, help="also write the full result dict to this JSON file")
    args, extra = parser.parse_known_args(argv)
    config_files = args.config_files.split() if args.config_files else None
    try:
        overrides = check_overrides(args.model, args.dataset, parse_overrides(extra))
        if args.json:
            check_writable(args.json, "--json")
        result = run(args.model, args.dataset, config_file_list=config_files, config_dict=overrides)
    except (ValueError, FileNotFoundError) as error:  # OptionError, CheckpointError, an unknown model or dataset
        print(f"error: {error}", file=sys.stderr)
        return 2
    if "stage_one" in result:
        reused = " (cached artifact: the run that wrote it)" if result["stage_one"].get("reused") else ""
        print(f"\nStage 1 ({result['stage_one']['model']}) on {args.dataset}{reused}:")
        print(format_results(result["stage_one"]))
    print(
        f"\n{result['model']} on {args.dataset} (best valid epoch {result['best_valid_epoch']}, "
        f"{result['epochs_run']} epochs, {result['train_seconds_per_epoch']:.1f} s/epoch):"
    )
    print(format_results(result))
    if args.json:
        write_atomically(args.json, json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
