"""Command line with RecBole's flags: --model, --dataset, --config_files, and any --key=value override.

Values are parsed as YAML (`--topk=[5,10]`, `--learning_rate=1e-3`, `--bf16=false`), never with `eval`.
"""

import argparse
import json
import sys

import yaml

from recbole_prorec.quick_start import run


def parse_value(text):
    """YAML scalar or list; `1e-3`, which YAML 1.1 leaves a string, becomes a float."""
    value = yaml.safe_load(text)
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
            raise SystemExit(f"Unrecognized argument '{arg}': overrides are written --key=value")
    if pending_key is not None:
        raise SystemExit(f"Option --{pending_key} has no value: write --{pending_key}=VALUE")
    return overrides


def format_results(result):
    """Best-valid and test metrics side by side, one metric per line."""
    valid, test = result["best_valid_result"], result["test_result"]
    lines = [f"{'metric':<12}{'valid':>10}{'test':>10}"]
    lines += [f"{metric:<12}{valid.get(metric, float('nan')):>10.4f}{test[metric]:>10.4f}" for metric in test]
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
    overrides = parse_overrides(extra)
    config_files = args.config_files.split() if args.config_files else None
    try:
        result = run(args.model, args.dataset, config_file_list=config_files, config_dict=overrides)
    except (ValueError, FileNotFoundError) as error:
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
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
