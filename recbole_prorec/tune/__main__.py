"""CLI of the Ray Tune hyper-parameter search: each trial is one `recbole_prorec.quick_start.run`.

    python -m recbole_prorec.tune --model=SASRec --dataset=ml-100k --num_samples=8 --max_epochs=10 [--key=value ...]

The search space is a YAML file (default `properties/hyper/<model>.yaml`) whose values are either constants or
one of Ray Tune's distributions written as a one-key mapping: `{choice: [a, b]}`, `{uniform: [low, high]}`,
`{loguniform: [low, high]}`, `{randint: [low, high]}` (high excluded, as in Ray). `--key=value` overrides fix
a key for every trial, also one the space samples.

The validation metric goes to Ray after every validation, so ASHA can stop a weak trial between epochs; a
trial that trains to the end reports every validation metric of its best epoch and its checkpoint. Trials
report no test metrics: after the search, only the best configuration's checkpoint is tested. The results land
in `<output>/<name>/`: `results.csv` and `results.md` (trials sorted by the validation metric, with status
completed / stopped early / error / unfinished; `results.md` ends with the best configuration's validation and
test metrics) and `best_config.yaml` (plain RecBole keys, for `run_recbole_prorec.py --config_files`; its
metrics in the header comment).

A two-stage model (PRORec) reads its item codes from a stage-1 artifact. Unless the space samples
`tokenizer_config` or the command line gives `tokenizer_artifact`, stage 1 is trained once before the trials
(with the overrides and the space's constants) and every trial uses those codes: the search is over stage 2,
and the best config names the artifact, so re-running it reproduces the best trial.
"""

import argparse
import logging
import os
import sys

from recbole_prorec.cli import parse_overrides
from recbole_prorec.options import check_overrides
from recbole_prorec.tune.plan import SearchSettings
from recbole_prorec.tune.search import search


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m recbole_prorec.tune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other --key=value is a RecBole override applied to every trial.",
    )
    parser.add_argument("--model", "-m", help="model to tune (ours or RecBole's)")
    parser.add_argument("--dataset", "-d", help="dataset folder under data_path")
    parser.add_argument("--space", default=None, help="search-space YAML (default properties/hyper/<model>.yaml)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files, applied after ours")
    parser.add_argument("--num_samples", type=int, default=8, help="trials to sample")
    parser.add_argument("--scheduler", choices=("asha", "fifo"), default="asha")
    parser.add_argument("--max_epochs", type=int, default=None, help="epochs per trial, ASHA's max_t (default: epochs)")
    parser.add_argument("--grace_period", type=int, default=2, help="ASHA: epochs before a trial can be stopped")
    parser.add_argument("--reduction_factor", type=int, default=2, help="ASHA: keep 1/reduction_factor at each rung")
    parser.add_argument("--cpus_per_trial", type=float, default=1, help="also torch threads per trial")
    parser.add_argument("--gpus_per_trial", type=float, default=0)
    parser.add_argument("--max_concurrent", type=int, default=0, help="trials at once (0: as resources allow)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (trials keep the config seed)")
    parser.add_argument("--address", default=None, help="an existing Ray cluster (e.g. 'auto'); default: local Ray")
    parser.add_argument("--num_cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--object_store_mb", type=float, default=200, help="object store of the local Ray")
    parser.add_argument("--output", default="saved/tune", help="results go to OUTPUT/NAME/")
    parser.add_argument("--name", default=None, help="experiment name (default MODEL-DATASET)")
    parser.add_argument("--resume", action="store_true", help="continue the search in OUTPUT/NAME")
    parser.add_argument("--verbose", type=int, default=1, help="Ray Tune verbosity 0-3")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("tensorboardX").setLevel(logging.WARNING)  # renames of metric names with '@'
    # Inherited by a local Ray's workers: setuptools' notice about Ray importing pkg_resources, once per worker.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:ray._private.parameter")
    if not args.resume and not (args.model and args.dataset):
        parser.error("--model and --dataset are required (except with --resume)")
    if args.resume and not args.name and not (args.model and args.dataset):
        parser.error("--resume needs --name, or the --model and --dataset of the search")
    try:  # a value of the wrong type would fail in every trial: refuse it before Ray starts
        overrides = parse_overrides(extra)
        if args.model and args.dataset:
            overrides = check_overrides(args.model, args.dataset, overrides)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = SearchSettings(
        model=args.model or "",
        dataset=args.dataset or "",
        space_file=args.space,
        num_samples=args.num_samples,
        scheduler=args.scheduler,
        overrides=overrides,
        config_files=args.config_files.split() if args.config_files else [],
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        max_epochs=args.max_epochs,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        seed=args.seed,
        output=args.output,
        name=args.name,
    )
    try:
        result = search(
            settings,
            resume=args.resume,
            address=args.address,
            num_cpus=args.num_cpus,
            object_store_mb=args.object_store_mb,
            verbose=args.verbose,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    folder = settings.experiment_dir
    print((folder / "results.md").read_text())
    print(f"Results: {folder / 'results.csv'}, {folder / 'results.md'}")
    if (folder / "best_config.yaml").is_file():
        print(f"Best config: {folder / 'best_config.yaml'}  (run_recbole_prorec.py --config_files <it>)")
    return 1 if result.rows and all(row["status"] == "error" for row in result.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
