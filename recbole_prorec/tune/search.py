"""The driver: start (or join) Ray, run or resume the trials, choose the best on validation, test only that one.

Testing happens here, once, after every trial has ended: the chosen configuration's checkpoint is evaluated on
the test split by the same code as `python -m recbole_prorec.evaluate`, so no trial's test result is ever seen.
"""

import logging
import warnings

from recbole_prorec.tune.plan import build_scheduler, load_plan, plan_search, save_plan
from recbole_prorec.tune.space import load_search_space, searched
from recbole_prorec.tune.tables import SearchResult, best_row, collect_rows, write_results
from recbole_prorec.tune.trial import pin_stage_one, trainable

logger = logging.getLogger(__name__)


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


def evaluate_best(best):
    """Test metrics of the chosen trial's checkpoint, on the CPU of the driver; {} when it left none."""
    if best is None or not best["checkpoint"]:
        return {}
    from recbole.trainer import Trainer

    from recbole_prorec.evaluate import load_data_and_model

    logger.info(f"Testing the best configuration alone: trial {best['trial']}, checkpoint {best['checkpoint']}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # RecBole's pandas notices, silenced as in the trials
        config, model, _, (_, _, test_data) = load_data_and_model(best["checkpoint"])
        test_result = Trainer(config, model).evaluate(test_data, load_best_model=False)
    return {key: float(value) for key, value in test_result.items()}


def _new_tuner(settings, plan, space, verbose):
    from ray import air, tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return tune.Tuner(
        trainable(settings, plan),
        param_space=searched(space, plan.trial_overrides),
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            num_samples=settings.num_samples,
            scheduler=build_scheduler(settings.scheduler, plan.max_t, settings.grace_period, settings.reduction_factor),
            search_alg=BasicVariantGenerator(max_concurrent=settings.max_concurrent or 0, random_state=settings.seed),
            reuse_actors=False,
        ),
        run_config=air.RunConfig(
            name=settings.name,
            storage_path=str(settings.experiment_dir.parent),
            verbose=verbose,
            failure_config=air.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )


def search(settings, resume=False, address=None, num_cpus=None, object_store_mb=200, verbose=1):
    """Run (or with `resume`, continue) a search; writes the result files and returns its `SearchResult`."""
    import ray
    from ray import tune

    folder = settings.experiment_dir
    if resume:
        if not tune.Tuner.can_restore(str(folder)):
            raise FileNotFoundError(f"--resume: no Ray Tune experiment to restore in {folder}")
        settings, plan = load_plan(folder)
    else:
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} holds an earlier search: pass --resume, or another --name or --output")
        space = load_search_space(settings.space_file)
        plan = plan_search(settings, space)

    started_ray = _init_ray(address, num_cpus, object_store_mb)
    try:
        if resume:
            tuner = tune.Tuner.restore(str(folder), trainable=trainable(settings, plan), resume_unfinished=True)
        else:
            artifact = pin_stage_one(settings, plan, space)
            if artifact:
                plan.trial_overrides["tokenizer_artifact"] = artifact
                plan.best_config_base["tokenizer_artifact"] = artifact
            save_plan(settings, plan)
            tuner = _new_tuner(settings, plan, space, verbose)
        rows = collect_rows(tuner.fit(), plan)
    finally:
        if started_ray:
            ray.shutdown()
    best = best_row(rows)
    result = SearchResult(rows=rows, best=best, best_test=evaluate_best(best))
    write_results(result, plan, settings)
    return result
