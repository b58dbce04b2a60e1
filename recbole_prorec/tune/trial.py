"""What runs in Ray's workers: one trial (a `quick_start.run` that reports validation), and the stage-1 task.

A trial reports validation metrics only, so nothing in Ray's results invites choosing a configuration on test;
the driver tests the chosen configuration alone (`search.evaluate_best`). These functions are imported by
reference, so Ray pickles trials by module path and workers import this module, not the CLI's `__main__`.
"""

import logging
import os

from recbole_prorec.registry import get_model
from recbole_prorec.tune.space import constants, plain

logger = logging.getLogger(__name__)


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
        logger.warning(f"trial keeps Ray's low CPU priority (nice {os.nice(0)}): {error}")


def train_trial(config, model, dataset, config_files, metric, overrides):
    """One Ray Tune trial: a RecBole run of the sampled `config` plus `overrides`, reporting `metric` after every
    validation, then every validation metric of the best epoch and the path of its checkpoint. No test
    evaluation runs in a trial: only the chosen configuration is tested, by the driver after the search.
    """
    from ray.air import session

    from recbole_prorec.quick_start import run

    _quiet_worker()
    _normal_priority()
    trial_config = {**plain(config), **overrides, "gpu_id": _ray_gpu_id()}
    epochs_trained = 0

    def report_validation(epoch_idx, valid_score):
        nonlocal epochs_trained
        epochs_trained = epoch_idx + 1
        session.report({metric: float(valid_score), "epoch": epoch_idx, "epochs_trained": epochs_trained})

    result = run(model, dataset, config_files, trial_config, saved=True, callback_fn=report_validation, test=False)
    final = {
        metric: float(result["best_valid_score"]),
        "epoch": result["best_valid_epoch"],
        "epochs_trained": epochs_trained,
        "best_epoch": result["best_valid_epoch"],
        "config_hash": result["config_hash"],
        "checkpoint": os.path.abspath(result["saved_model_file"]),
        **{f"valid_{key}": float(value) for key, value in result["best_valid_result"].items()},
    }
    session.report(final)


def trainable(settings, plan):
    """`train_trial` bound to the search's model, data and overrides, on one trial's CPUs and GPUs."""
    from ray import tune

    bound = tune.with_parameters(
        train_trial,
        model=settings.model,
        dataset=settings.dataset,
        config_files=settings.config_files,
        metric=plan.metric,
        overrides=plan.trial_overrides,
    )
    return tune.with_resources(bound, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def pin_stage_one(settings, plan, space):
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
    overrides = {**constants(space), **plan.trial_overrides}
    config_files = settings.config_files

    @ray.remote(num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial)
    def stage_one():
        from recbole_prorec import quick_start

        _quiet_worker()
        task_overrides = {**overrides, "gpu_id": _ray_gpu_id()}
        probe = quick_start.build_config(settings.model, settings.dataset, config_files, task_overrides)
        quick_start.ensure_dataset_files(probe)
        # trained for the search: chosen on validation, so no test evaluation (as in a trial)
        artifact, _ = quick_start.stage_one_artifact(
            model_class, probe, settings.dataset, config_files, task_overrides, test=False
        )
        return artifact

    logger.info(f"Training (or reusing) the {model_class.stage_one_model} artifact once for all trials")
    artifact = ray.get(stage_one.remote())
    logger.info(f"Every trial reads item codes from {artifact}")
    return artifact
