"""Where a training step's time goes: `torch.profiler` over a few optimizer steps of any model on a real dataset.

    python benchmarks/profile_step.py --model PRORec --dataset amazon-beauty --steps 20 [--config '{...}']

Builds the model exactly as a benchmark run does (our YAMLs, the suite's shared data and cache folders, the
model's own training dataset), skips `--warmup` steps, then profiles `--steps` steps of forward, backward and
optimizer update on one thread. Prints the operators by self CPU time and writes the table to
`results/profile/<model>-<dataset>.txt` (committed beside the other records).
"""

import argparse
import json
import pathlib

import torch
import yaml
from common import BENCHMARKS, SHARED_SETTINGS

from recbole_prorec.utils import write_atomically


def profile_training(model_name, dataset, steps, warmup, overrides):
    """The profiler's operator table (text) over `steps` training steps after `warmup` unprofiled ones."""
    from recbole.data import data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    from recbole_prorec import compat
    from recbole_prorec.quick_start import build_config, create_model_dataset, ensure_dataset_files
    from recbole_prorec.registry import get_model

    compat.apply()
    model_class = get_model(model_name)
    config = build_config(model_class, dataset, config_dict={**SHARED_SETTINGS, "use_gpu": False, **overrides})
    ensure_dataset_files(config)
    torch.set_num_threads(int(config["torch_threads"] or 1))
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_model_dataset(model_class, config))
    model = model_class(config, train_data.dataset)
    trainer = (getattr(model_class, "trainer_class", None) or Trainer)(config, model)
    model.train()

    def step(interaction):
        trainer.optimizer.zero_grad()
        losses = model.calculate_loss(interaction)
        (sum(losses) if isinstance(losses, tuple) else losses).backward()
        trainer.optimizer.step()

    batches = iter(train_data)
    for _ in range(warmup):
        step(next(batches))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step(next(batches))
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--config", default="{}", help="overrides as a YAML/JSON mapping, e.g. '{torch_threads: 1}'")
    parser.add_argument("--output", help="table file (default: results/profile/<model>-<dataset>.txt)")
    args = parser.parse_args(argv)
    overrides = yaml.safe_load(args.config) or {}
    if not isinstance(overrides, dict):
        raise SystemExit(f"--config must be a mapping, got {args.config!r}")
    table = profile_training(args.model, args.dataset, args.steps, args.warmup, overrides)
    header = f"{args.model} on {args.dataset}, {args.steps} training steps, overrides {json.dumps(overrides)}\n\n"
    print(header + table)
    output = pathlib.Path(args.output or BENCHMARKS / "results" / "profile" / f"{args.model}-{args.dataset}.txt")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(output, (header + table).encode())


if __name__ == "__main__":
    main()
