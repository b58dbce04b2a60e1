"""What a search runs: the user's settings, the plan resolved from them and the run's config, and the scheduler.

Resolved once in the driver and saved beside the results, so a trial, a resumed search and the result tables all
read the same metric, overrides and epoch budget.
"""

import dataclasses
import json
import logging
import math
import pathlib

from recbole_prorec.tune.space import check_space_keys, constants, sampled_keys, searched
from recbole_prorec.utils import PROPERTIES_DIR, write_atomically

logger = logging.getLogger(__name__)

SETTINGS_FILE = "search_settings.json"


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


def save_plan(settings, plan):
    """Write settings and plan into the experiment folder, for `load_plan` on `--resume`."""
    folder = settings.experiment_dir
    folder.mkdir(parents=True, exist_ok=True)
    state = {"settings": dataclasses.asdict(settings), "plan": dataclasses.asdict(plan)}
    write_atomically(folder / SETTINGS_FILE, json.dumps(state, indent=2, default=str))


def load_plan(folder):
    """(settings, plan) saved in `folder`, wherever the folder has moved since."""
    saved = json.loads((folder / SETTINGS_FILE).read_text())
    saved["settings"].update(output=str(folder.parent), name=folder.name)
    return SearchSettings(**saved["settings"]), SearchPlan(**saved["plan"])


def build_scheduler(name, max_t, grace_period=2, reduction_factor=2):
    """FIFO, or ASHA over epochs trained (metric and mode come from TuneConfig).

    `stop_last_trials=False`: a trial that reaches max_t ends by itself, after its final report (its best
    validation metrics and checkpoint), instead of being stopped at its last validation.
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
    config = build_config(model, dataset, config_files, {**constants(space), **overrides})
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
        sampled=sampled_keys(searched(space, trial_overrides)),
        metric=f"valid_{config['valid_metric'].lower()}",
        mode="max" if config["valid_metric_bigger"] else "min",
        max_t=int(config["epochs"]),
    )
