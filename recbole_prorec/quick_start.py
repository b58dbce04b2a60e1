"""`run(...)`: one RecBole run of any model, ours or RecBole's, behind the CLI, the tuner and the benchmarks.

RecBole's `run_recbole(model=...)` resolves models by name through its own registry and rejects plugin classes,
so the pipeline is assembled here from RecBole's parts: Config -> create_dataset -> data_preparation -> model ->
Trainer.fit -> Trainer.evaluate. A stage-2 model that declares `stage_one_model` gets its item-code artifact
from a stage-1 run first (cached, so a second run reuses it). A stage-1 run leaves its result beside the
artifact (`<artifact>.result.json`), so a stage-2 run that reuses the artifact still reports the stage-1 numbers.
"""

import contextlib
import json
import logging
import pathlib
import resource
import sys
import time

import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_trainer, init_logger, init_seed, set_color

from recbole_prorec import checkpoint, compat
from recbole_prorec.options import check_dataset_name
from recbole_prorec.quantization import artifact_prefix, recorded_digest
from recbole_prorec.registry import get_model, model_config_files
from recbole_prorec.utils import settings_digest, write_atomically

logger = logging.getLogger(__name__)

# Keys that decide nothing about a model's results: left out of the config hash.
_VOLATILE_KEYS = {
    "device",
    "gpu_id",
    "use_gpu",
    "show_progress",
    "state",
    "checkpoint_dir",
    "torch_threads",
    "worker",
    "eval_batch_size",
    "resume_checkpoint",
    "save_latest_checkpoint",
    "local_rank",
    "single_spec",
    "nproc",
    "world_size",
    "offset",
    "ip",
    "port",
}


@contextlib.contextmanager
def _without_command_line():
    """RecBole's Config also parses `sys.argv` (with `eval`): our callers pass options explicitly instead."""
    saved_argv = sys.argv
    sys.argv = saved_argv[:1]
    try:
        yield
    finally:
        sys.argv = saved_argv


def build_config(model, dataset, config_file_list=None, config_dict=None):
    """RecBole Config from our YAMLs (protocol, dataset, model), the user's files, then `config_dict`."""
    model_class = get_model(model)
    files = model_config_files(model_class, dataset) + list(config_file_list or [])
    with _without_command_line():
        return Config(model=model_class, dataset=dataset, config_file_list=files, config_dict=dict(config_dict or {}))


def config_hash(config):
    """Short stable hash of everything in a config that can change a result."""
    settings = {k: v for k, v in config.final_config_dict.items() if k not in _VOLATILE_KEYS}
    return settings_digest(settings)


def ensure_dataset_files(config):
    """Make sure `<data_path>/<dataset>/<dataset>.inter` exists, converting raw Amazon files when needed."""
    dataset_dir = pathlib.Path(config["data_path"])
    name = config["dataset"]
    if (dataset_dir / f"{name}.inter").is_file():
        return dataset_dir
    from recbole_prorec.data import ensure_atomic_files

    raw_path = config["raw_data_path"]
    if raw_path:
        raw_path = pathlib.Path(raw_path) / name if (pathlib.Path(raw_path) / name).is_dir() else raw_path
    try:
        return ensure_atomic_files(dataset_dir.parent, name, raw_path=raw_path)
    except FileNotFoundError as error:
        known = sorted(p.name for p in dataset_dir.parent.glob("*") if (p / f"{p.name}.inter").is_file())
        raise FileNotFoundError(
            f"Unknown dataset '{name}': {error}\nDatasets with atomic files under {dataset_dir.parent}/: "
            f"{', '.join(known) or 'none'} (plus RecBole's bundled ml-100k)."
        ) from None


class _EpochClock:
    """Wall time of each training and validation epoch, and every metric of each validation, recorded around the
    trainer's own methods (RecBole's `callback_fn` sees the `valid_metric` score alone)."""

    def __init__(self, trainer):
        self.train_seconds, self.valid_seconds, self.valid_results = [], [], []
        trainer._train_epoch = self._timed(trainer._train_epoch, self.train_seconds)
        timed_valid_epoch = self._timed(trainer._valid_epoch, self.valid_seconds)

        def valid_epoch(*args, **kwargs):
            score, result = timed_valid_epoch(*args, **kwargs)
            self.valid_results.append(dict(result))
            return score, result

        trainer._valid_epoch = valid_epoch

    @staticmethod
    def _timed(method, seconds):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = method(*args, **kwargs)
            seconds.append(time.perf_counter() - start)
            return result

        return timed

    def elapsed(self):
        """Seconds spent training and validating so far."""
        return sum(self.train_seconds) + sum(self.valid_seconds)


def create_model_dataset(model_class, config):
    """The model's own dataset class when it declares one (`dataset_class`), else RecBole's `create_dataset`."""
    dataset_class = getattr(model_class, "dataset_class", None)
    return dataset_class(config) if dataset_class else create_dataset(config)


def sample_validation_users(config, valid_data, num_users):
    """A full-sort validation loader over a fixed random sample of `num_users` validation users.

    The sample depends only on `seed` and the set of validation users (not on the row order, which differs
    between datasets built differently), so every epoch, and every model with the same seed, validates on the
    same users; early stopping then costs a fraction of a full validation. Test always uses every user.
    """
    dataset = valid_data._dataset
    users = dataset.inter_feat[dataset.uid_field]  # one validation sample per user
    if num_users >= len(users):
        return valid_data
    generator = torch.Generator().manual_seed(int(config["seed"]))
    candidates = users.unique()  # sorted
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:num_users]]
    rows = torch.isin(users, chosen).nonzero().squeeze(1)
    logging.getLogger().info(f"validating on {len(rows)} of {len(users)} users (valid_sample_users)")
    return type(valid_data)(config, dataset.copy(dataset.inter_feat[rows]), valid_data._sampler, shuffle=False)


def stage_one_artifact(model_class, config, dataset, config_file_list, config_dict, test=True):
    """Path of the stage-1 artifact a stage-2 model reads, training stage 1 first when none is cached.

    Stage 1 sees the same files and overrides as stage 2, plus `tokenizer_config` (stage-1-only overrides).
    The cache key is the stage-1 model's own `default_artifact_path` (a hash of the settings that shape its
    codes), so a changed tokenizer option trains a new tokenizer and a standalone stage-1 run with the same
    settings is reused. `test=False` (a tuning trial, which must choose on validation alone) trains stage 1
    without its test evaluation too.
    """
    given = config["tokenizer_artifact"]
    if given:
        prefix = artifact_prefix(given)  # `x`, `x.npz` and `x.json` all name the artifact `x`
        if not pathlib.Path(f"{prefix}.npz").is_file():
            raise FileNotFoundError(f"tokenizer_artifact: no file {prefix}.npz")
        return str(prefix), None
    stage_one = model_class.stage_one_model
    stage_two_only = {"tokenizer_config", "resume_checkpoint"}
    overrides = {k: v for k, v in dict(config_dict or {}).items() if k not in stage_two_only}
    overrides.update(config["tokenizer_config"] or {})
    stage_one_config = build_config(stage_one, dataset, config_file_list, overrides)
    artifact = get_model(stage_one).default_artifact_path(stage_one_config)
    if pathlib.Path(f"{artifact}.npz").is_file():
        logger.info(f"Reusing the cached {stage_one} artifact {artifact}")
        return artifact, cached_stage_one_result(artifact)
    logger.info(f"No {stage_one} artifact cached: training stage 1 ({stage_one}) first")
    stage_one_result = run(stage_one, dataset, config_file_list, {**overrides, "artifact_path": artifact}, test=test)
    return artifact, stage_one_result


def stage_one_result_path(artifact):
    return pathlib.Path(f"{artifact_prefix(artifact)}.result.json")


def keep_stage_one_result(result):
    """Write a stage-1 run's result beside the artifact it wrote, tied to that artifact's arrays digest."""
    path = result["artifact"]["path"]
    kept = {"artifact_sha256": recorded_digest(path), "result": result}
    write_atomically(stage_one_result_path(path), json.dumps(kept, default=str))


def cached_stage_one_result(artifact):
    """The result of the run that wrote a cached artifact, marked `"reused": True`; None when it left none.

    Artifacts written before results were kept, or by `recbole_prorec.tokenize` (no training run), have none; a
    result whose digest no longer matches (the artifact was rebuilt since) is not reported.
    """
    path = stage_one_result_path(artifact)
    if not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        digest, result = kept["artifact_sha256"], kept["result"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        logger.warning(f"{path}: not a kept stage-1 result ({error!r}); this run will not report its stage 1")
        return None
    if digest != recorded_digest(artifact):
        logger.warning(f"{path}: written for other codes than {artifact}.npz holds now; stage 1 not reported")
        return None
    return {**result, "reused": True}


def kept_epoch(valid_curve, best_valid_score):
    """The epoch whose weights RecBole kept, and tested: the last epoch of `valid_curve` that scored
    `best_valid_score`, since RecBole's early stopping takes a tie with the best as an improvement (and scores are
    rounded to `metric_decimal_place`, so ties are common). None when no epoch of the curve did: a resumed run
    whose best checkpoint came from an earlier process.
    """
    tied = [point[0] for point in valid_curve if point[1] == best_valid_score]
    return tied[-1] if tied else None


_LATEST_SUFFIX = "-latest.pth"


def latest_checkpoint_path(best_checkpoint):
    """`X.pth` -> `X-latest.pth`, where `save_latest_checkpoint` keeps the last validated epoch beside the best."""
    best = pathlib.Path(best_checkpoint)
    return str(best.with_name(best.stem + _LATEST_SUFFIX))


def best_checkpoint_path(checkpoint):
    """The best-epoch checkpoint `checkpoint` belongs to: itself, or `X.pth` for a latest one `X-latest.pth`."""
    checkpoint = str(checkpoint)
    return checkpoint[: -len(_LATEST_SUFFIX)] + ".pth" if checkpoint.endswith(_LATEST_SUFFIX) else checkpoint


def run(model, dataset, config_file_list=None, config_dict=None, saved=True, callback_fn=None, test=True):
    """Train `model` on `dataset` with early stopping on the validation metric, then test the best weights.

    `test=False` skips the test evaluation (`test_result` is then empty), of stage 1 too: a tuning trial must
    choose on validation alone. Either way the model ends holding its best epoch's weights (with `saved`), which
    are what a stage-1 model writes its item-code artifact from.

    Returns a dict with the best validation and the test results, the validation score of every epoch this
    process trained ("valid_curve": [[epoch, score, seconds of training and validation so far], ...], and every
    metric of each of those validations as "valid_metrics": [[epoch, {metric: value}], ...]), epochs run,
    the best epoch, seconds per training epoch, seconds of the test evaluation, peak RSS and the config hash; for a
    two-stage model also the stage-1 result under "stage_one" (with `"reused": True` when the artifact was cached).
    """
    model_class = get_model(model)
    check_dataset_name(dataset)
    compat.apply()
    config_dict = dict(config_dict or {})
    stage_one_result = None
    if getattr(model_class, "stage_one_model", None):
        probe = build_config(model_class, dataset, config_file_list, config_dict)
        if hasattr(model_class, "check_config"):  # options the model refuses fail now, not after stage 1 trained
            model_class.check_config(probe)
        ensure_dataset_files(probe)
        artifact, stage_one_result = stage_one_artifact(
            model_class, probe, dataset, config_file_list, config_dict, test=test
        )
        config_dict["tokenizer_artifact"] = artifact

    config = build_config(model_class, dataset, config_file_list, config_dict)
    ensure_dataset_files(config)
    if config["epochs"] is not None and config["epochs"] < 1:
        raise ValueError(f"epochs={config['epochs']}: must be at least 1 (0 epochs would test an untrained model)")
    resume_state = None
    if config["resume_checkpoint"]:  # a file that cannot be resumed from is refused before the data is loaded
        resume_state = checkpoint.read_checkpoint(
            config["resume_checkpoint"], model=model_class, required=checkpoint.RESUME_KEYS
        )
        checkpoint.check_data(resume_state, config["resume_checkpoint"], config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    if config["torch_threads"]:
        torch.set_num_threads(int(config["torch_threads"]))
    run_logger = logging.getLogger()
    run_logger.info(config)

    data = create_model_dataset(model_class, config)
    run_logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    if config["valid_sample_users"]:
        valid_data = sample_validation_users(config, valid_data, config["valid_sample_users"])

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    recommender = model_class(config, train_data.dataset).to(config["device"])
    if hasattr(recommender, "codes_written_at_training_end"):
        recommender.codes_written_at_training_end = True  # on_training_end below writes them
    run_logger.info(recommender)
    trainer_class = getattr(model_class, "trainer_class", None) or get_trainer(config["MODEL_TYPE"], config["model"])
    trainer = trainer_class(config, recommender)
    if config["resume_checkpoint"]:
        checkpoint.check_weights(resume_state, config["resume_checkpoint"], recommender)
        try:
            trainer.resume_checkpoint(config["resume_checkpoint"])
        except (RuntimeError, ValueError, KeyError) as error:  # e.g. an optimizer state of another learner
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise checkpoint.CheckpointError(
                f"{config['resume_checkpoint']}: cannot resume from it ({first_line})"
            ) from None
        # RecBole would test (and overwrite) the file it resumed from; the best weights live in the best checkpoint
        trainer.saved_model_file = best_checkpoint_path(config["resume_checkpoint"])
    keep_latest = saved and config["save_latest_checkpoint"]
    latest_checkpoint = latest_checkpoint_path(trainer.saved_model_file) if keep_latest else None
    clock = _EpochClock(trainer)

    valid_scores, valid_metrics = [], []

    def record_epoch(epoch_idx, valid_score):
        valid_scores.append((epoch_idx, valid_score, clock.elapsed()))
        valid_metrics.append([epoch_idx, clock.valid_results[-1]])
        if latest_checkpoint:
            trainer._save_checkpoint(epoch_idx, verbose=False, saved_model_file=latest_checkpoint)
        if callback_fn is not None:
            callback_fn(epoch_idx, valid_score)

    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"], callback_fn=record_epoch
    )
    chosen = None
    if hasattr(recommender, "choose_on_validation"):  # options chosen on validation (e.g. PRORec's fusion weight)
        if saved:
            checkpoint.load_checkpoint(trainer.saved_model_file, recommender)
        valid_metric = config["valid_metric"].lower()
        chosen = recommender.choose_on_validation(
            lambda: trainer.evaluate(valid_data, load_best_model=False, show_progress=False)[valid_metric]
        )
    test_start = time.perf_counter()
    test_result = (
        trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"]) if test else {}
    )
    test_seconds = time.perf_counter() - test_start
    if saved and not test and pathlib.Path(trainer.saved_model_file).is_file():
        # as `evaluate(load_best_model=True)` does on the test path: what follows (a stage-1 model's artifact,
        # written by on_training_end) must come from the best epoch's weights, not the last epoch's
        checkpoint.load_checkpoint(trainer.saved_model_file, recommender)

    if latest_checkpoint:
        pathlib.Path(latest_checkpoint).unlink(missing_ok=True)  # training ended: only an interruption needs it
    best_epoch = kept_epoch(valid_scores, best_valid_score)
    if best_epoch is None and trainer.start_epoch and saved:
        # resumed, and no epoch of this process matched the best checkpoint's score: RecBole kept that checkpoint's
        # weights but not their epoch or validation result, so read the one and measure the other again
        best_epoch = compat.load_checkpoint(trainer.saved_model_file)["epoch"]
        best_valid_result = trainer.evaluate(valid_data, load_best_model=True, show_progress=config["show_progress"])
    result = {
        "model": model_class.__name__,
        "dataset": dataset,
        "seed": config["seed"],
        "config_hash": config_hash(config),
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": dict(best_valid_result or {}),
        "test_result": dict(test_result or {}),
        # a resumed run counts the epochs its checkpoint had already trained; the seconds are this process's
        "epochs_run": trainer.start_epoch + len(clock.train_seconds),
        "resumed_from_epoch": trainer.start_epoch or None,
        "max_epochs": config["epochs"],
        "lr_schedule": config["lr_schedule"] or "constant",
        "stopping_step": config["stopping_step"],
        "best_valid_epoch": best_epoch,
        "valid_curve": [list(point) for point in valid_scores],
        "valid_metrics": valid_metrics,  # [[epoch, {metric: value}], ...]: what the valid_metric curve trades away
        "train_seconds_per_epoch": sum(clock.train_seconds) / max(len(clock.train_seconds), 1),
        "valid_seconds_per_epoch": sum(clock.valid_seconds) / max(len(clock.valid_seconds), 1),
        "test_eval_seconds": test_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bf16": getattr(recommender, "bf16", None),  # resolved (`auto` follows the hardware)
        "saved_model_file": trainer.saved_model_file if saved else None,
    }
    if chosen is not None:
        result["chosen_on_validation"] = chosen
    if hasattr(recommender, "on_training_end"):
        result["artifact"] = recommender.on_training_end(train_data.dataset)
        if "path" in result["artifact"]:  # a stage-1 model: its result stays beside the artifact it wrote
            keep_stage_one_result(result)
    if stage_one_result is not None:
        result["stage_one"] = stage_one_result
    run_logger.info(set_color("best valid ", "yellow") + f": {result['best_valid_result']}")
    run_logger.info(set_color("test result", "yellow") + f": {result['test_result']}")
    return result
