"""Ray Tune searches: search-space files, the schedulers, and real searches whose tables are the trials' own
reports, with validation metrics only, and whose one test result is that of the best configuration's checkpoint."""

import csv
import json
import pathlib

import pytest
import yaml

from recbole_prorec.evaluate import evaluate_checkpoint
from recbole_prorec.quick_start import build_config
from recbole_prorec.registry import get_model, model_config_files
from recbole_prorec.tune import (
    TEST_LABEL,
    SearchSettings,
    SearchSpaceError,
    build_scheduler,
    load_search_space,
    plan_search,
    sampled_keys,
    search,
)
from recbole_prorec.tune.__main__ import main
from recbole_prorec.utils import PROPERTIES_DIR

RECBOLE_OVERALL = pathlib.Path(__import__("recbole").__file__).parent / "properties" / "overall.yaml"


def _keys(path):
    return set(yaml.load(pathlib.Path(path).read_text(), Loader=yaml.FullLoader) or {})


@pytest.mark.parametrize("space_file", sorted((PROPERTIES_DIR / "hyper").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_search_spaces_sample_only_options_of_their_model(space_file):
    space = load_search_space(space_file)
    assert sampled_keys(space), f"{space_file.name} samples nothing"
    model_files = model_config_files(get_model(space_file.stem), "ml-100k")  # the model's YAML and its parents'
    options = set().union(*map(_keys, model_files)) | _keys(RECBOLE_OVERALL)
    assert set(space) <= options, f"{space_file.name}: not options of the model: {set(space) - options}"


def test_constants_stay_constant_and_distributions_nest(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "learning_rate: 1e-4\n"
        "hidden_dropout_prob: {choice: [0.2, 0.5]}\n"
        "topk: [5, 10]\n"
        "tokenizer_config: {align_weight: {uniform: [0.1, 0.5]}, code_levels: 3}\n"
    )
    space = load_search_space(path)
    assert space["learning_rate"] == 1e-4 and isinstance(space["learning_rate"], float)
    assert space["topk"] == [5, 10] and space["tokenizer_config"]["code_levels"] == 3
    assert space["hidden_dropout_prob"].categories == [0.2, 0.5]
    assert sampled_keys(space) == ["hidden_dropout_prob", "tokenizer_config.align_weight"]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "learning_rate: {loguniformm: [1e-4, 1e-2]}",
            r"key 'learning_rate': unknown distribution 'loguniformm' \(did you mean 'loguniform'",
        ),
        ("learning_rate: {uniform: [0.1]}", r"key 'learning_rate': uniform expects \[low, high\]"),
        (
            "learning_rate: {uniform: [0.5, 0.1]}",
            r"key 'learning_rate': uniform needs low < high, got low=0.5, high=0.1",
        ),
        ("learning_rate: {loguniform: [0, 0.1]}", r"key 'learning_rate': loguniform needs low > 0"),
        ("n_layers: {randint: [1.5, 3]}", r"key 'n_layers': randint bounds must be integers"),
        ("hidden_size: {choice: []}", r"key 'hidden_size': choice expects a non-empty list"),
        ("learning_rate: [1e-4\nn_layers: 2\n", r"line \d+: not valid YAML"),
        ("- learning_rate\n- n_layers\n", r"expected a mapping of option names"),
    ],
)
def test_bad_search_space_file_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SearchSpaceError, match=rf"space\.yaml.*{message}"):
        load_search_space(path)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "learning_rat: {loguniform: [1e-4, 1e-2]}",
            r"key 'learning_rat' is not an option of SASRec \(did you mean 'learning_rate'\?\)",
        ),
        ("learning_rate: {normal: [0.001, 0.0001]}", r"key 'learning_rate': .* is neither a distribution"),
    ],
)
def test_space_keys_must_be_options_of_the_run(tiny_data_path, tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    settings = SearchSettings("SASRec", "tiny", space_file=path, overrides={"data_path": tiny_data_path})
    with pytest.raises(SearchSpaceError, match=rf"space\.yaml: {message}"):
        plan_search(settings, load_search_space(path))


def test_bad_space_is_a_clear_cli_error_before_ray_starts(tiny_data_path, tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text("learning_rate: {uniform: [0.5, 0.1]}\n")
    assert main(["--model=SASRec", "--dataset=tiny", "--space", str(path), f"--data_path={tiny_data_path}"]) == 2
    assert "space.yaml: key 'learning_rate': uniform needs low < high" in capsys.readouterr().err


def test_asha_stops_between_epochs_and_lets_finishing_trials_make_their_final_report():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    asha = build_scheduler("asha", max_t=10, grace_period=2, reduction_factor=2)
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "epochs_trained" and asha._max_t == 10
    bracket = asha._brackets[0]
    assert sorted(milestone for milestone, _ in bracket._rungs) == [2, 4, 8]
    assert bracket._stop_last_trials is False
    assert sorted(m for m, _ in build_scheduler("asha", max_t=1, grace_period=2)._brackets[0]._rungs) == [1]
    assert isinstance(build_scheduler("fifo", max_t=10), FIFOScheduler)


def test_resume_and_rerun_guard_the_experiment_folder(tmp_path):
    settings = SearchSettings("SASRec", "tiny", output=tmp_path, name="run")
    with pytest.raises(FileNotFoundError, match="no Ray Tune experiment to restore"):
        search(settings, resume=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.csv").write_text("")
    with pytest.raises(FileExistsError, match="pass --resume"):
        search(settings)


def _reports(trial_dir):
    return [json.loads(line) for line in (pathlib.Path(trial_dir) / "result.json").read_text().splitlines()]


def _assert_trials_carry_no_test_metrics(rows):
    """Neither a trial's reports to Ray nor its row may hold a test metric: a search is chosen on validation."""
    for row in rows:
        assert not any("test" in key for key in row), row
        assert not any("test" in key for report in _reports(row["path"]) for key in report), row["trial"]


def _assert_best_is_tested_alone(result):
    """The best row's checkpoint, evaluated again, gives the search's test metrics and the row's validation."""
    best = result.best
    assert best is result.rows[0] and best["status"] == "completed"
    evaluation = evaluate_checkpoint(best["checkpoint"])
    assert result.best_test and result.best_test == evaluation["test_result"]
    assert best["valid"] == pytest.approx(evaluation["valid_result"])  # the checkpoint is the best epoch's


def test_search_table_is_the_trials_reports_sorted_and_an_error_keeps_the_others(fast_run_config, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {loguniform: [1e-3, 1e-2]}\nn_heads: {choice: [2, 3]}\nhidden_size: 64\n")
    settings = SearchSettings(
        "SASRec",
        "tiny",
        space_file=space,
        num_samples=3,
        scheduler="fifo",
        seed=0,
        overrides={**fast_run_config, "epochs": 2},
        output=tmp_path / "tune",
        name="sasrec",
    )
    result = search(settings, num_cpus=1, verbose=0)
    rows = result.rows

    # n_heads=3 does not divide hidden_size 64: that trial fails, reported with its config, the others complete.
    assert [row["status"] for row in rows] == ["completed", "completed", "error"]
    failed = rows[-1]
    assert failed["config"]["n_heads"] == 3 and "not a multiple" in failed["error"]

    for row in rows[:2]:
        reports = _reports(row["path"])
        assert len(reports) == 3  # a validation report after each of the 2 epochs, then the final one
        assert [r["epochs_trained"] for r in reports] == [1, 2, 2]
        final = reports[-1]
        assert row["valid"] == {k[len("valid_") :]: v for k, v in final.items() if k.startswith("valid_")}
        assert row["best_epoch"] == final["best_epoch"] and row["checkpoint"] == final["checkpoint"]
        assert row["valid"]["ndcg@10"] == max(r["valid_ndcg@10"] for r in reports)
        assert set(row["valid"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}
        assert row["config"] == {key: final["config"][key] for key in ("learning_rate", "n_heads")}
    assert rows[0]["valid"]["ndcg@10"] >= rows[1]["valid"]["ndcg@10"]
    _assert_trials_carry_no_test_metrics(rows)
    _assert_best_is_tested_alone(result)
    assert set(result.best_test) == set(rows[0]["valid"])

    folder = tmp_path / "tune" / "sasrec"
    table = list(csv.DictReader((folder / "results.csv").open()))
    assert [r["trial"] for r in table] == [row["trial"] for row in rows]
    assert float(table[0]["valid_ndcg@10"]) == rows[0]["valid"]["ndcg@10"]
    assert table[2]["status"] == "error" and table[2]["valid_ndcg@10"] == ""
    assert not any("test" in column for column in table[0])
    markdown = (folder / "results.md").read_text()
    trials_table, best_section = markdown.split("## Best configuration")
    positions = [trials_table.index(row["trial"]) for row in rows]
    assert positions == sorted(positions)
    assert "test" not in next(line for line in trials_table.splitlines() if line.startswith("| rank"))
    assert rows[0]["trial"] in best_section.splitlines()[0]
    assert f"| {TEST_LABEL} | " in best_section

    best_text = (folder / "best_config.yaml").read_text()
    assert f"# {TEST_LABEL}: ndcg@10 " in best_text
    best = yaml.safe_load(best_text)
    assert best["learning_rate"] == rows[0]["config"]["learning_rate"] and best["n_heads"] == 2
    assert best["hidden_size"] == 64 and best["epochs"] == 2
    config = build_config("SASRec", "tiny", config_file_list=[str(folder / "best_config.yaml")])
    assert all(config[key] == value for key, value in best.items() if key != "data_path")  # RecBole appends the name


def test_two_stage_search_trains_stage_one_once_and_names_it_in_the_best_config(fast_run_config, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {loguniform: [1e-3, 1e-2]}\nkd_item_weight: {choice: [0.1, 0.5]}\n")
    tiny_model = {
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "d_ff": 64,
        "attention_heads": 2,
        "n_user_buckets": 0,
        "hidden_size": 16,
        "inner_size": 32,
        "code_levels": 2,
        "codebook_size": 4,
        "text_fields": ["title", "brand", "categories"],
    }
    settings = SearchSettings(
        "PRORec",
        "tiny",
        space_file=space,
        num_samples=2,
        scheduler="fifo",
        overrides={**fast_run_config, **tiny_model},
        output=tmp_path / "tune",
        name="prorec",
    )
    result = search(settings, num_cpus=1, verbose=0)
    rows = result.rows

    assert [row["status"] for row in rows] == ["completed", "completed"]
    _assert_trials_carry_no_test_metrics(rows)
    _assert_best_is_tested_alone(result)
    artifacts = {row["full_config"]["tokenizer_artifact"] for row in rows}
    assert len(artifacts) == 1 and pathlib.Path(f"{artifacts.pop()}.npz").is_file()
    assert len(list((tmp_path / "saved" / "cache" / "artifacts").glob("*PRORecTokenizer*.npz"))) == 1
    best = yaml.safe_load((tmp_path / "tune" / "prorec" / "best_config.yaml").read_text())
    assert best["tokenizer_artifact"] == rows[0]["full_config"]["tokenizer_artifact"]
