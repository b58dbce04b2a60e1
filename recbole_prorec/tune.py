"""Ray Tune hyper-parameter searches: each trial is one `recbole_prorec.quick_start.run`.

    python -m recbole_prorec.tune --model=SASRec --dataset=ml-100k --num_samples=8 --max_epochs=10 [--key=value ...]

The search space is a YAML file (default `properties/hyper/<model>.yaml`) whose values are either constants or
one of Ray Tune's distributions written as a one-key mapping: `{choice: [a, b]}`, `{uniform: [low, high]}`,
`{loguniform: [low, high]}`, `{randint: [low, high]}` (high excluded, as in Ray). `--key=value` overrides fix
a key for every trial, also one the space samples.

The validation metric goes to Ray after every validation, so ASHA can stop a weak trial between epochs; a
trial that trains to the end reports the test metrics of its best checkpoint once more. The results land in
`<output>/<name>/`: `results.csv` and `results.md` (trials sorted by the validation metric, with status
completed / stopped early / error / unfinished) and `best_config.yaml` (plain RecBole keys, for
`run_recbole_prorec.py --config_files`).

A two-stage model (PRORec) reads its item codes from a stage-1 artifact. Unless the space samples
`tokenizer_config` or the command line gives `tokenizer_artifact`, stage 1 is trained once before the trials
(with the overrides and the space's constants) and every trial uses those codes: the search is over stage 2,
and the best config names the artifact, so re-running it reproduces the best trial.
"""

import argparse
import csv
import dataclasses
import difflib
import io
import json
import logging
import math
import os
import pathlib
import re
import sys

import yaml

from recbole_prorec.cli import parse_overrides
from recbole_prorec.registry import get_model
from recbole_prorec.utils import PROPERTIES_DIR, write_atomically

logger = logging.getLogger(__name__)

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
_SETTINGS_FILE = "search_settings.json"


class SearchSpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the key."""


class _YamlLoader(yaml.SafeLoader):
    """safe_load that reads `1e-4` as a float (YAML 1.1 reads it as a string), as RecBole's config loader does."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# ----------------------------------------------------------------------------------------------- search space


def _distribution(path, key, name, args):
    """The Ray Tune domain for `{name: args}`, after checking the arguments."""
    from ray import tune

    where = f"{path}: key '{key}'"
    if name == "choice":
        if not isinstance(args, list) or not args:
            raise SearchSpaceError(f"{where}: choice expects a non-empty list of values, got {args!r}")
        return tune.choice(args)
    if not isinstance(args, list) or len(args) != 2:
        raise SearchSpaceError(f"{where}: {name} expects [low, high], got {args!r}")
    low, high = args
    number_types = (int,) if name == "randint" else (int, float)
    if any(isinstance(bound, bool) or not isinstance(bound, number_types) for bound in args):
        kind = "integers" if name == "randint" else "numbers"
        raise SearchSpaceError(f"{where}: {name} bounds must be {kind}, got {args!r}")
    if not low < high:
        raise SearchSpaceError(f"{where}: {name} needs low < high, got low={low}, high={high}")
    if name == "loguniform" and low <= 0:
        raise SearchSpaceError(f"{where}: loguniform needs low > 0, got {low}")
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[name](low, high)


def _parse_node(node, path, key):
    """Constant, distribution (one-key mapping named after one), or mapping of further nodes (nested options)."""
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        ((name, args),) = node.items()
        if name in DISTRIBUTIONS:
            return _distribution(path, key, name, args)
        close = difflib.get_close_matches(str(name), DISTRIBUTIONS, n=1, cutoff=0.75)
        if close:
            raise SearchSpaceError(
                f"{path}: key '{key}': unknown distribution '{name}' (did you mean '{close[0]}'?); "
                f"known: {', '.join(DISTRIBUTIONS)}"
            )
    return {sub_key: _parse_node(value, path, f"{key}.{sub_key}") for sub_key, value in node.items()}


def load_search_space(path):
    """Read a search-space YAML file into Ray Tune's `param_space` form (constants stay constants)."""
    path = pathlib.Path(path)
    if not path.is_file():
        known = sorted(p.name for p in (PROPERTIES_DIR / "hyper").glob("*.yaml"))
        raise FileNotFoundError(f"No search-space file {path} (properties/hyper has: {', '.join(known)})")
    try:
        raw = yaml.load(path.read_text(), Loader=_YamlLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise SearchSpaceError(f"{path}{line}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(raw, dict) or not raw:
        raise SearchSpaceError(
            f"{path}: expected a mapping of option names to values or distributions, "
            f"e.g. 'learning_rate: {{loguniform: [1e-4, 1e-2]}}', got {type(raw).__name__}"
        )
    return {key: _parse_node(value, path, key) for key, value in raw.items()}


def _is_domain(value):
    from ray.tune.search.sample import Domain

    return isinstance(value, Domain)


def sampled_keys(space, prefix=""):
    """Dotted names of the keys a space samples (nested options as `outer.inner`)."""
    keys = []
    for key, value in space.items():
        if _is_domain(value):
            keys.append(prefix + key)
        elif isinstance(value, dict):
            keys += sampled_keys(value, f"{prefix}{key}.")
    return keys


def check_space_keys(space, config, path):
    """Every key must be an option of the run's config; nested mappings only where the option is a mapping."""
    for key, value in space.items():
        if key not in config.final_config_dict:
            close = difflib.get_close_matches(key, list(config.final_config_dict), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SearchSpaceError(
                f"{path}: key '{key}' is not an option of {config['model']}{hint}: "
                f"see properties/model/{config['model']}.yaml, properties/overall.yaml and RecBole's options"
            )
        if isinstance(value, dict) and not isinstance(config[key], (dict, type(None))):
            raise SearchSpaceError(
                f"{path}: key '{key}': {value!r} is neither a distribution ({', '.join(DISTRIBUTIONS)}) "
                f"nor a value for '{key}', which is not a mapping option"
            )


def _constants(space):
    """The space's top-level keys with nothing sampled under them."""
    return {key: value for key, value in space.items() if not sampled_keys({key: value})}


def _searched(space, overrides):
    """The space without the keys the command line fixes (those reach trials as overrides)."""
    return {key: value for key, value in space.items() if key not in overrides}


def _nested_get(mapping, dotted_key):
    for part in dotted_key.split("."):
        mapping = mapping.get(part) if isinstance(mapping, dict) else None
    return mapping


def _plain(value):
    """Python scalars and containers (Ray may sample numpy scalars), so configs dump to YAML and JSON."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value.item() if hasattr(value, "item") else value


# ----------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass
class SearchSettings:
    """What a search runs; saved beside its results so `--resume` needs only --output and --name."""

    model: str
    dataset: str
    space_file: str = None
    num_samples: int = 8
    scheduler: str = "asha"
    overrides: dict = dataclasses.field(default_factory=dict)
    config_files: list = dataclasses.field(default_factory=list)
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent: int = 0
    max_epochs: int = None
    grace_period: int = 2
    reduction_factor: int = 2
    seed: int = 0
    output: str = "saved/tune"
    name: str = None

    def __post_init__(self):
        # Trials run in their own folders: every path is made absolute where the search starts.
        default_space = PROPERTIES_DIR / "hyper" / f"{self.model}.yaml"
        self.space_file = str(pathlib.Path(self.space_file or default_space).resolve())
        self.config_files = [str(pathlib.Path(path).resolve()) for path in self.config_files]
        self.output = str(pathlib.Path(self.output).resolve())
        self.name = self.name or f"{self.model}-{self.dataset}"
        if self.scheduler not in ("asha", "fifo"):
            raise ValueError(f"scheduler must be 'asha' or 'fifo', got '{self.scheduler}'")

    @property
    def experiment_dir(self):
        return pathlib.Path(self.output) / self.name


@dataclasses.dataclass
class SearchPlan:
    """The resolved search: what each trial runs with, and how the results are read."""

    trial_overrides: dict  # Keys every trial gets over its sampled ones (absolute paths, quiet logging).
    best_config_base: dict  # Keys of the best config besides the space's: the user's overrides (+ artifact).
    space_keys: list  # Top-level keys of the search-space file.
    sampled: list  # Dotted keys the space samples.
    metric: str  # Reported validation metric, e.g. "valid_ndcg@10".
    mode: str  # "max" or "min".
    max_t: int  # Epochs a trial may train (ASHA's max_t).


def build_scheduler(name, max_t, grace_period=2, reduction_factor=2):
    """FIFO, or ASHA over epochs trained (metric and mode come from TuneConfig).

    `stop_last_trials=False`: a trial that reaches max_t ends by itself, after its final report with the test
    metrics, instead of being stopped at its last validation.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if name == "fifo":
        return FIFOScheduler()
    if grace_period > max_t:
        logger.warning(f"grace_period {grace_period} > max_epochs {max_t}: using {max_t}")
        grace_period = max_t
    return ASHAScheduler(
        time_attr="epochs_trained",
        max_t=max_t,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        stop_last_trials=False,
    )


def plan_search(settings, space):
    """Check the space against the run's config and resolve what trials need (absolute paths, quiet logs)."""
    from recbole_prorec.quick_start import build_config

    overrides = dict(settings.overrides)
    if settings.max_epochs is not None:
        if overrides.get("epochs", settings.max_epochs) != settings.max_epochs:
            raise ValueError(f"--epochs={overrides['epochs']} and --max_epochs={settings.max_epochs}: give one")
        overrides["epochs"] = settings.max_epochs
    fixed = sorted(set(space) & set(overrides))
    if fixed:
        logger.info(f"Fixed by the command line, not searched: {', '.join(fixed)}")
    model, dataset, config_files = settings.model, settings.dataset, settings.config_files
    check_space_keys(space, build_config(model, dataset, config_files, overrides), settings.space_file)
    config = build_config(model, dataset, config_files, {**_constants(space), **overrides})
    absolute = {
        "data_path": str(pathlib.Path(config["data_path"]).resolve().parent),
        "cache_dir": str(pathlib.Path(config["cache_dir"] or "saved/cache").resolve()),
    }
    quiet = {"state": "WARNING", "show_progress": False, "torch_threads": max(1, math.floor(settings.cpus_per_trial))}
    trial_overrides = {**quiet, **overrides, **absolute}
    return SearchPlan(
        trial_overrides=trial_overrides,
        best_config_base={key: trial_overrides[key] for key in settings.overrides},
        space_keys=list(space),
        sampled=sampled_keys(_searched(space, trial_overrides)),
        metric=f"valid_{config['valid_metric'].lower()}",
        mode="max" if config["valid_metric_bigger"] else "min",
        max_t=int(config["epochs"]),
    )


# ----------------------------------------------------------------------------------------------- trials


def _ray_gpu_id():
    """RecBole sets CUDA_VISIBLE_DEVICES to its gpu_id (default "0"): give it the GPUs Ray assigned ("" = CPU)."""
    import ray

    return ",".join(str(gpu) for gpu in ray.get_gpu_ids())


def _quiet_worker():
    """RecBole's pandas/torch deprecation notices would repeat in every trial's output."""
    import warnings

    warnings.simplefilter("ignore", FutureWarning)


def _normal_priority():
    """Ray starts workers at nice 15: beside any other job a trial then gets a few % of a core (measured: one
    ml-100k SASRec epoch took 27 minutes). Back to the driver's priority where the OS allows it."""
    try:
        os.nice(os.getpriority(os.PRIO_PROCESS, os.getppid()) - os.nice(0))
    except OSError as error:  # lowering niceness needs CAP_SYS_NICE
        logging.getLogger(__name__).warning(f"trial keeps Ray's low CPU priority (nice {os.nice(0)}): {error}")


def train_trial(config, model, dataset, config_files, metric, overrides):
    """One Ray Tune trial: a RecBole run of the sampled `config` plus `overrides`, reporting `metric` after every
    validation, then the test metrics of the best checkpoint."""
    from ray.air import session

    from recbole_prorec.quick_start import run

    _quiet_worker()
    _normal_priority()
    trial_config = {**_plain(config), **overrides, "gpu_id": _ray_gpu_id()}
    epochs_trained = 0

    def report_validation(epoch_idx, valid_score):
        nonlocal epochs_trained
        epochs_trained = epoch_idx + 1
        session.report({metric: float(valid_score), "epoch": epoch_idx, "epochs_trained": epochs_trained})

    result = run(model, dataset, config_files, trial_config, saved=True, callback_fn=report_validation)
    final = {
        metric: float(result["best_valid_score"]),
        "epoch": result["best_valid_epoch"],
        "epochs_trained": epochs_trained,
        "best_epoch": result["best_valid_epoch"],
        "config_hash": result["config_hash"],
        "checkpoint": os.path.abspath(result["saved_model_file"]),
        **{f"valid_{key}": float(value) for key, value in result["best_valid_result"].items()},
        **{f"test_{key}": float(value) for key, value in result["test_result"].items()},
    }
    session.report(final)


def _trainable(settings, plan):
    from ray import tune

    trainable = tune.with_parameters(
        train_trial,
        model=settings.model,
        dataset=settings.dataset,
        config_files=settings.config_files,
        metric=plan.metric,
        overrides=plan.trial_overrides,
    )
    return tune.with_resources(trainable, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def _pin_stage_one(settings, plan, space):
    """For a two-stage model, train stage 1 once (as a Ray task on one trial's resources) and give every trial
    its artifact; None when each trial must train its own (the space samples `tokenizer_config`) or one is given.
    """
    import ray

    model_class = get_model(settings.model)
    if not getattr(model_class, "stage_one_model", None) or plan.trial_overrides.get("tokenizer_artifact"):
        return None
    if any(key.split(".")[0] == "tokenizer_config" for key in plan.sampled):
        logger.info("The space samples tokenizer_config: every trial trains its own stage-1 tokenizer")
        return None
    overrides = {**_constants(space), **plan.trial_overrides}
    config_files = settings.config_files

    @ray.remote(num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial)
    def stage_one():
        from recbole_prorec import quick_start

        _quiet_worker()
        task_overrides = {**overrides, "gpu_id": _ray_gpu_id()}
        probe = quick_start.build_config(settings.model, settings.dataset, config_files, task_overrides)
        quick_start.ensure_dataset_files(probe)
        artifact, _ = quick_start.stage_one_artifact(model_class, probe, settings.dataset, config_files, task_overrides)
        return artifact

    logger.info(f"Training (or reusing) the {model_class.stage_one_model} artifact once for all trials")
    artifact = ray.get(stage_one.remote())
    logger.info(f"Every trial reads item codes from {artifact}")
    return artifact


# ----------------------------------------------------------------------------------------------- results


def _trial_status(result):
    if result.error is not None:
        return "error"
    metrics = result.metrics or {}
    if any(key.startswith("test_") for key in metrics):
        return "completed"
    return "stopped early" if metrics.get("done") else "unfinished"


def _error_line(error):
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def collect_rows(result_grid, plan):
    """One row per trial, best validation metric first (trials without one last)."""
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        history = result.metrics_dataframe
        status = _trial_status(result)
        row = {
            "trial": metrics.get("trial_id") or pathlib.Path(result.path).name,
            "status": status,
            "config": {key: _plain(_nested_get(result.config or {}, key)) for key in plan.sampled},
            "best_epoch": None,
            "epochs_trained": metrics.get("epochs_trained"),
            "valid": {},
            "test": {},
            "time_s": metrics.get("time_total_s"),
            "error": _error_line(result.error) if result.error is not None else None,
            "path": result.path,
            "full_config": {**_plain(result.config or {}), **plan.trial_overrides},
        }
        if status == "completed":
            row["best_epoch"] = metrics["best_epoch"]
            row["valid"] = {k[len("valid_") :]: v for k, v in metrics.items() if k.startswith("valid_")}
            row["test"] = {k[len("test_") :]: v for k, v in metrics.items() if k.startswith("test_")}
        elif history is not None and plan.metric in getattr(history, "columns", ()):
            scores = history[[plan.metric, "epoch"]].dropna()
            if len(scores):
                best = scores[plan.metric].idxmax() if plan.mode == "max" else scores[plan.metric].idxmin()
                row["best_epoch"] = int(scores.loc[best, "epoch"])
                row["valid"] = {plan.metric[len("valid_") :]: float(scores.loc[best, plan.metric])}
        rows.append(row)
    key = plan.metric[len("valid_") :]
    sign = -1 if plan.mode == "max" else 1
    rows.sort(key=lambda row: (key not in row["valid"], sign * row["valid"].get(key, 0.0)))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _metric_names(rows, part, first=None):
    names = [first] if first else []
    for row in rows:
        names += [name for name in row[part] if name not in names]
    return names


def _format(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def results_csv(rows, plan):
    """CSV text: one column per metric and per sampled key (`config/<key>`); blanks where a value is missing."""
    valid_names = _metric_names(rows, "valid", plan.metric[len("valid_") :])
    test_names = _metric_names(rows, "test")
    config_names = _metric_names(rows, "config")
    header = ["rank", "trial", "status", "best_epoch", "epochs_trained"]
    header += [f"valid_{n}" for n in valid_names] + [f"test_{n}" for n in test_names]
    header += ["time_s"] + [f"config/{n}" for n in config_names] + ["error", "path"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow(
            [row["rank"], row["trial"], row["status"], row["best_epoch"], row["epochs_trained"]]
            + [row["valid"].get(n) for n in valid_names]
            + [row["test"].get(n) for n in test_names]
            + [row["time_s"]]
            + [json.dumps(row["config"].get(n)) for n in config_names]
            + [row["error"], row["path"]]
        )
    return buffer.getvalue()


def results_markdown(rows, plan, title):
    """Markdown table: the tuned validation metric, every test metric, time, status and sampled config."""
    valid_key = plan.metric[len("valid_") :]
    test_names = _metric_names(rows, "test")
    header = ["rank", "trial", "status", "best epoch", f"valid {valid_key}"] + [f"test {n}" for n in test_names]
    header += ["time (s)", "config"]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        config = ", ".join(f"{key}={_format(value)}" for key, value in row["config"].items())
        status = row["status"] + (f": {row['error']}" if row["error"] else "")
        cells = [row["rank"], row["trial"], status, row["best_epoch"], row["valid"].get(valid_key)]
        cells += [row["test"].get(n) for n in test_names] + [row["time_s"], config]
        lines.append("| " + " | ".join(_format(cell) or "–" for cell in cells).replace("\n", " ") + " |")
    return "\n".join(lines) + "\n"


def best_config(rows, plan, space_file):
    """(row, YAML text) of the best completed trial (else the best with a validation metric); None if none."""
    candidates = [row for row in rows if row["status"] == "completed"] or [row for row in rows if row["valid"]]
    if not candidates:
        return None, None
    best = candidates[0]
    values = {key: best["full_config"][key] for key in plan.space_keys if key in best["full_config"]}
    values.update(plan.best_config_base)
    valid_key = plan.metric[len("valid_") :]
    header = (
        f"# Best trial {best['trial']} ({best['status']}) of a Ray Tune search over {space_file}:\n"
        f"# valid {valid_key} {_format(best['valid'].get(valid_key))}"
        + (f", test {valid_key} {_format(best['test'][valid_key])}" if valid_key in best["test"] else "")
        + f", best epoch {best['best_epoch']}.\n"
    )
    return best, header + yaml.safe_dump(values, sort_keys=False)


def write_results(rows, plan, settings):
    folder = settings.experiment_dir
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "results.csv", results_csv(rows, plan))
    title = f"{settings.model} on {settings.dataset}: {len(rows)} trials, sorted by {plan.metric}"
    write_atomically(folder / "results.md", results_markdown(rows, plan, title))
    _, text = best_config(rows, plan, settings.space_file)
    if text is not None:
        write_atomically(folder / "best_config.yaml", text)
    for row in rows:
        if row["status"] == "error":
            logger.error(
                f"Trial {row['trial']} failed ({row['error']}) with config {row['full_config']}; "
                f"traceback in {row['path']}/error.txt"
            )


# ----------------------------------------------------------------------------------------------- search


def _init_ray(address, num_cpus, object_store_mb):
    """Connect to a cluster at `address`, or start a small local Ray; True if this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=int(object_store_mb * 1024**2),
            logging_level=logging.WARNING,
        )
    return True


def search(settings, resume=False, address=None, num_cpus=None, object_store_mb=200, verbose=1):
    """Run (or with `resume`, continue) a search; writes the result files and returns the sorted rows."""
    import ray
    from ray import air, tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    folder = settings.experiment_dir
    if resume:
        if not tune.Tuner.can_restore(str(folder)):
            raise FileNotFoundError(f"--resume: no Ray Tune experiment to restore in {folder}")
        saved = json.loads((folder / _SETTINGS_FILE).read_text())
        saved["settings"].update(output=str(folder.parent), name=folder.name)
        settings, plan = SearchSettings(**saved["settings"]), SearchPlan(**saved["plan"])
        space = None
    else:
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} holds an earlier search: pass --resume, or another --name or --output")
        space = load_search_space(settings.space_file)
        plan = plan_search(settings, space)

    started_ray = _init_ray(address, num_cpus, object_store_mb)
    try:
        if resume:
            tuner = tune.Tuner.restore(str(folder), trainable=_trainable(settings, plan), resume_unfinished=True)
        else:
            artifact = _pin_stage_one(settings, plan, space)
            if artifact:
                plan.trial_overrides["tokenizer_artifact"] = artifact
                plan.best_config_base["tokenizer_artifact"] = artifact
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(
                folder / _SETTINGS_FILE,
                json.dumps(
                    {"settings": dataclasses.asdict(settings), "plan": dataclasses.asdict(plan)}, indent=2, default=str
                ),
            )
            tuner = tune.Tuner(
                _trainable(settings, plan),
                param_space=_searched(space, plan.trial_overrides),
                tune_config=tune.TuneConfig(
                    metric=plan.metric,
                    mode=plan.mode,
                    num_samples=settings.num_samples,
                    scheduler=build_scheduler(
                        settings.scheduler, plan.max_t, settings.grace_period, settings.reduction_factor
                    ),
                    search_alg=BasicVariantGenerator(
                        max_concurrent=settings.max_concurrent or 0, random_state=settings.seed
                    ),
                    reuse_actors=False,
                ),
                run_config=air.RunConfig(
                    name=settings.name,
                    storage_path=str(folder.parent),
                    verbose=verbose,
                    failure_config=air.FailureConfig(max_failures=0, fail_fast=False),
                ),
            )
        result_grid = tuner.fit()
        rows = collect_rows(result_grid, plan)
    finally:
        if started_ray:
            ray.shutdown()
    write_results(rows, plan, settings)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(
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
    settings = SearchSettings(
        model=args.model or "",
        dataset=args.dataset or "",
        space_file=args.space,
        num_samples=args.num_samples,
        scheduler=args.scheduler,
        overrides=parse_overrides(extra),
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
        rows = search(
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
    return 1 if rows and all(row["status"] == "error" for row in rows) else 0


if __name__ == "__main__":
    from recbole_prorec import tune as tune_module  # the importable module, so Ray pickles trials by reference

    sys.exit(tune_module.main())
