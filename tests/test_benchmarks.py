"""benchmarks/: the suite runner (plan, skip, resume, adopt), the report, and the speed measurements."""

import json
import math
import pathlib
import sys

import pytest
import torch
import yaml

from recbole_prorec.registry import get_model

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import hits_by_popularity  # noqa: E402
import rekey  # noqa: E402
import report  # noqa: E402
import run as runner  # noqa: E402
import serving  # noqa: E402
import speed  # noqa: E402
import supersede  # noqa: E402


@pytest.fixture
def bench_dirs(tmp_path, monkeypatch, fast_run_config):
    """The runner's folders moved into tmp_path, and a one-epoch SASRec suite on the tiny dataset."""
    suites, results, work = tmp_path / "suites", tmp_path / "results", tmp_path / "work"
    suites.mkdir()
    for name, value in {"SUITES": suites, "RESULTS": results, "WORK": work}.items():
        monkeypatch.setattr(common, name, value)
    monkeypatch.setattr(common, "SHARED_SETTINGS", {"data_path": fast_run_config["data_path"], "show_progress": False})
    suite = {
        "datasets": ["tiny"],
        "seeds": [1],
        "config": {**fast_run_config, "epochs": 1, "state": "INFO"},
        "runs": [{"model": "SASRec", "config": {"n_layers": 1}}],
    }
    (suites / "tiny.yaml").write_text(yaml.safe_dump(suite))
    return suites, results, work


def test_plan_merges_overrides_and_gives_stable_keys():
    suite = {
        "datasets": ["a", "b"],
        "seeds": [0, 1],
        "config": {"epochs": 5, "lr": 1},
        "runs": [{"model": "SASRec"}, {"model": "PRORec", "label": "no kd", "config": {"epochs": 2}}],
    }
    runs = common.plan(suite)
    assert len(runs) == 8
    no_kd = [r for r in runs if r["label"] == "no kd"]
    assert all(r["overrides"]["epochs"] == 2 and r["overrides"]["lr"] == 1 for r in no_kd)
    assert [r["key"] for r in common.plan(suite)] == [r["key"] for r in runs]
    assert len({r["key"] for r in runs}) == 8
    only = common.plan(suite, seeds=[7], only=["no kd"])
    assert [(r["label"], r["seed"]) for r in only] == [("no kd", 7), ("no kd", 7)]
    assert {r["label"] for r in common.plan(suite, only=["PRORec"])} == {"no kd"}  # a model name labelling no run
    suite["runs"].append({"model": "PRORec"})  # now "PRORec" is also a label: it selects that run alone
    assert {r["label"] for r in common.plan(suite, only=["PRORec"])} == {"PRORec"}


def test_named_configuration_files_are_part_of_a_run_and_its_key():
    entry = {"model": "TIGER", "label": "t"}
    suite = {"datasets": ["a"], "runs": [entry]}
    (plain,) = common.plan(suite)
    entry["config_files"] = ["properties/layout/seq2seq.yaml"]
    (paper,) = common.plan(suite)
    assert plain["config_files"] == [] and paper["config_files"] == ["properties/layout/seq2seq.yaml"]
    assert paper["key"] != plain["key"] and paper["overrides"] == plain["overrides"]


def test_suite_errors_name_the_file_and_key(bench_dirs):
    suites, _, _ = bench_dirs
    (suites / "broken.yaml").write_text("datasets: [tiny]\nruns:\n  - {label: x}\n")
    with pytest.raises(SystemExit, match=r"broken.yaml: runs\[0\] has no 'model' key"):
        common.load_suite("broken")
    with pytest.raises(SystemExit, match="Suites: broken, tiny"):
        common.load_suite("missing")


def test_a_broken_results_line_is_reported_with_its_line_number(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"key": "a"}\nnot json\n')
    with pytest.raises(SystemExit, match=r"s.jsonl:2"):
        common.finished_keys(path)


def test_runner_records_a_run_then_skips_it_and_adopts_orphaned_records(bench_dirs, capsys):
    _, results, work = bench_dirs
    assert runner.main(["--suite", "tiny"]) == 0
    lines = (results / "tiny.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["model"] == "SASRec" and record["seed"] == 1 and record["epochs_run"] == 1
    assert set(record["test_result"]) >= {"recall@10", "ndcg@10"} and record["git_commit"] is not None
    assert record["overrides"]["n_layers"] == 1

    assert "epoch 0: valid score" in capsys.readouterr().out  # progress echoed from the child's log

    assert runner.main(["--suite", "tiny"]) == 0  # finished: skipped
    assert len((results / "tiny.jsonl").read_text().splitlines()) == 1
    assert "1 already in" in capsys.readouterr().out

    # A run whose child finished after its runner died left record.json behind: the next runner adopts it.
    (results / "tiny.jsonl").unlink()
    assert runner.main(["--suite", "tiny"]) == 0
    adopted = json.loads((results / "tiny.jsonl").read_text())
    assert adopted["finished_at"] == record["finished_at"]


def test_supersede_copies_a_rows_records_and_archives_the_old_ones(tmp_path, monkeypatch):
    suites, results = tmp_path / "suites", tmp_path / "results"
    suites.mkdir()
    monkeypatch.setattr(common, "SUITES", suites)
    monkeypatch.setattr(common, "RESULTS", results)
    main = {"datasets": ["d"], "seeds": [1, 2], "config": {"epochs": 10}, "runs": [{"model": "M"}, {"model": "S"}]}
    lever = {"datasets": ["d"], "seeds": [1, 2], "runs": [{"model": "M", "label": "short", "config": {"epochs": 10}}]}
    (suites / "main.yaml").write_text(yaml.safe_dump(main))
    (suites / "lever.yaml").write_text(yaml.safe_dump(lever))

    def record(suite, spec, score):
        return {
            "key": spec["key"],
            "suite": suite,
            "label": spec["label"],
            "dataset": "d",
            "seed": spec["seed"],
            "overrides": spec["overrides"],
            "config_files": [],
            "best_valid_score": score,
        }

    results.mkdir()
    old = {s["label"]: s for s in common.plan(main, seeds=[1])}
    (results / "main.jsonl").write_text("".join(json.dumps(record("main", old[k], 0.1)) + "\n" for k in ("M", "S")))
    lever_records = [record("lever", spec, 0.2 + spec["seed"]) for spec in common.plan(lever)]
    (results / "lever.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lever_records))

    assert supersede.main(["--into", "main", "M", "--from", "lever", "short", "--archive", "old.jsonl"]) == 0
    rows = [json.loads(line) for line in (results / "main.jsonl").read_text().splitlines()]
    assert [(r["label"], r["seed"], r["best_valid_score"]) for r in rows] == [
        ("S", 1, 0.1),
        ("M", 1, 1.2),
        ("M", 2, 2.2),
    ]
    assert rows[1]["key"] == old["M"]["key"] and rows[1]["copied_from"] == f"lever:{lever_records[0]['key']}"
    assert rows[1]["suite"] == "main"
    (archived,) = [json.loads(line) for line in (results / "archive" / "old.jsonl").read_text().splitlines()]
    assert archived["label"] == "M" and archived["best_valid_score"] == 0.1

    lever["runs"][0]["config"]["epochs"] = 40  # a different run: refused unless the difference is accepted
    (suites / "lever.yaml").write_text(yaml.safe_dump(lever))
    changed = [{**r, "overrides": {**r["overrides"], "epochs": 40}} for r in lever_records]
    (results / "lever.jsonl").write_text("".join(json.dumps(r) + "\n" for r in changed))
    with pytest.raises(SystemExit, match="epochs: 10 here, 40 in the source"):
        supersede.main(["--into", "main", "M", "--from", "lever", "short", "--archive", "old.jsonl"])
    with pytest.raises(SystemExit, match="no 'short' record for d seed 3"):
        supersede.main(["--into", "main", "M", "--from", "lever", "short", "--archive", "old.jsonl", "--seeds", "3"])


def test_rekey_moves_records_to_the_keys_of_a_pinned_suite_and_keeps_the_old_ones(tmp_path, monkeypatch):
    suites, results = tmp_path / "suites", tmp_path / "results"
    suites.mkdir()
    results.mkdir()
    monkeypatch.setattr(common, "SUITES", suites)
    monkeypatch.setattr(common, "RESULTS", results)
    old = {"datasets": ["d"], "seeds": [1], "runs": [{"model": "M", "label": "lever"}, {"model": "S"}]}
    records = [{"key": spec["key"], "label": spec["label"], "seed": 1} for spec in common.plan(old)]
    (results / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pinned = {**old, "runs": [{"model": "M", "label": "lever", "config": {"epochs": 40}}, {"model": "S"}]}
    (suites / "s.yaml").write_text(yaml.safe_dump(pinned))

    assert rekey.rekey("s", old) == 1
    lever, untouched = [json.loads(line) for line in (results / "s.jsonl").read_text().splitlines()]
    assert lever["key"] == common.plan(pinned)[0]["key"] and lever["recorded_as"] == records[0]["key"]
    assert untouched == records[1]
    assert common.finished_keys(results / "s.jsonl") == {spec["key"] for spec in common.plan(pinned)}  # not re-run
    assert rekey.rekey("s", old) == 0  # already moved: the records are no longer the old plan's


def test_records_keep_paths_relative_to_the_checkout():
    inside = str(common.REPO / "benchmarks" / "work" / "cache" / "a")
    record = {"artifact": {"path": inside}, "runs": [inside, "/elsewhere/b"], "n": 1}
    assert runner.repo_relative(record) == {
        "artifact": {"path": "benchmarks/work/cache/a"},
        "runs": ["benchmarks/work/cache/a", "/elsewhere/b"],
        "n": 1,
    }


def test_resume_overrides_pick_the_newest_checkpoint_of_the_right_stage(tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    assert runner.resume_overrides("PRORec", tmp_path) == {}
    (saved / "PRORecTokenizer-Nov-01.pth").write_bytes(b"")
    assert runner.resume_overrides("PRORec", tmp_path) == {
        "tokenizer_config_resume": str(saved / "PRORecTokenizer-Nov-01.pth")
    }
    assert runner.resume_overrides("SASRec", tmp_path) == {}
    (saved / "PRORec-Nov-02.pth").write_bytes(b"")
    assert runner.resume_overrides("PRORec", tmp_path) == {"resume_checkpoint": str(saved / "PRORec-Nov-02.pth")}


def _record(label, seed, ndcg, recall=0.1, dataset="d"):
    test = {"recall@10": recall, "ndcg@10": ndcg}
    return {
        "label": label,
        "dataset": dataset,
        "seed": seed,
        "test_result": test,
        "best_valid_epoch": 3,
        "epochs_run": 8,
        "max_epochs": 10,
        "train_seconds_per_epoch": 60.0,
        "valid_seconds_per_epoch": 15.0,
        "test_eval_seconds": 5.0,
        "peak_rss_mb": 900.0,
        "config_hash": "abc",
        "git_commit": "0123456789",
    }


def test_report_means_over_seeds_bolds_the_best_and_shows_the_improvement(tmp_path):
    results, suites = tmp_path / "results", tmp_path / "suites"
    results.mkdir()
    suites.mkdir()
    records = [_record("Base", 0, 0.02), _record("Base", 1, 0.04), _record("New", 0, 0.045)]
    records[2]["artifact"] = {
        "stats": {
            "method": "rkmeans",
            "levels": 3,
            "codebook_size": 256,
            "collision_rate_before": 0.05,
            "collision_rate_after": 0.0,
            "max_collision_index": 2,
            "utilization": [1.0, 0.5, 0.25],
            "perplexity": [200.0, 100.0, 50.0],
            "reconstruction_error": 0.01,
        }
    }
    (results / "main.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (suites / "main.yaml").write_text(yaml.safe_dump({"description": "demo", "proposed": "New", "baselines": ["Base"]}))
    text = report.build_report(results, suites, tmp_path / "plots")
    base_line = next(line for line in text.splitlines() if line.startswith("| Base |"))
    new_line = next(line for line in text.splitlines() if line.startswith("| New |"))
    assert "0.0300 ± 0.0141" in base_line and "| 2 |" in base_line
    assert "**0.0450**" in new_line
    assert "| 3/8 | 60 | 10.0 |" in new_line  # 8 epochs of 60 s training + 15 s validation: 10 minutes
    assert "N@10 +50.0%" in text
    assert "| New | rkmeans | 3 x 256 | 0.0500 → 0.0000 | 2 | 1.00, 0.50, 0.25 | 200, 100, 50 | 0.0100 |" in text
    assert (tmp_path / "plots" / "main-d.png").stat().st_size > 0


def test_token_space_codes_get_a_tie_table_tied_and_untied(tmp_path):
    results, suites = tmp_path / "results", tmp_path / "suites"
    results.mkdir()
    suites.mkdir()
    records = [_record("SemConv", 0, 0.02), _record("untied", 0, 0.03), _record("SASRec", 0, 0.04)]
    for record, tied, loss in ((records[0], True, (152.0, 148.25)), (records[1], False, (97.0, None))):
        record["artifact"] = {
            "stats": {
                "method": "token-rqvae",
                "levels": 2,
                "codebook_size": 256,
                "collision_rate_before": 0.1,
                "collision_rate_after": 0.0,
                "max_collision_index": 3,
                "utilization": [0.98, 1.0],
                "perplexity": [240.0, 230.0],
                "reconstruction_error": 0.2,
                "tied": tied,
                "tie_weight": 100.0 if tied else 0.0,
                "token_scale_per_level": [3.5, 1.25],
                "token_distance_per_level": [0.1, 0.2],
                "token_cosine_per_level": [0.99, 0.85],
                "token_row_gap": 0.6,
                "loss_first_epoch": loss[0],
                "loss_last_epoch": loss[1],
            }
        }
    (results / "semconv.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (suites / "semconv.yaml").write_text(yaml.safe_dump({"description": "demo"}))
    text = report.build_report(results, suites, tmp_path / "plots")
    assert "| SemConv | weight 100 | 0.98, 1.00 | 3.50, 1.25 | 0.10, 0.20 | 0.99, 0.85 | 0.60 | 152.0 → 148.2 |" in text
    assert "| untied | not tied | 0.98, 1.00 |" in text and "| not recorded |" in text
    assert "| SASRec | not tied" not in text and "| SASRec | weight" not in text


def _summary_lines(records, suite, tmp_path):
    """{dataset: {column: cell}} of the summary table that `records` (one suite, "main") give."""
    results, suites = tmp_path / "results", tmp_path / "suites"
    results.mkdir()
    suites.mkdir()
    (results / "main.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (suites / "main.yaml").write_text(yaml.safe_dump(suite))
    text = report.build_report(results, suites, tmp_path / "plots")
    start = text.index("## Summary")
    summary = text[start : text.index("\n## ", start)]
    table = [line.strip("| ").split(" | ") for line in summary.splitlines() if line.startswith("| ")]
    header, lines = table[0], table[1:]
    assert all(len(cells) == len(header) for cells in lines)
    return summary, {cells[0]: dict(zip(header, cells)) for cells in lines}


def test_summary_compares_the_proposed_model_with_the_best_baseline_and_calls_significance(tmp_path):
    records = [_record("Base", 0, 0.030), _record("Base", 1, 0.032), _record("Weak", 0, 0.01)]
    records += [_record("New", 0, 0.040), _record("New", 1, 0.042)]
    suite = {"summary": True, "proposed": "New", "baselines": ["Base", "Weak"], "datasets": ["toys", "sports"]}
    summary, lines = _summary_lines([{**r, "dataset": "toys"} for r in records], suite, tmp_path)
    line, not_run = lines["toys"], lines["sports"]  # no records for "sports" yet
    assert not_run["ours"] == "New: not run yet"
    assert line["ours"] == "New (2 seeds)" and line["best baseline in N@10"] == "Base (2 seeds)"
    assert line["N@10 vs it"] == "+32.3%"  # .041 vs .031
    # std 0.00141 each: 2 sqrt(2) 0.00141
    assert line["N@10 significance"] == "significant (difference 0.0100 vs 2 std 0.0040)"
    assert "TIGER" in summary and line["TIGER published R@10 / N@10"] == line["N@10 vs TIGER published"] == "–"
    close = [_record("Base", 0, 0.030), _record("Base", 1, 0.040), _record("New", 0, 0.036), _record("New", 1, 0.038)]
    base, new = report.group_rows(close[:2]), report.group_rows(close[2:])
    assert report.significance(new[0], base[0]).startswith("not significant")
    assert report.significance(new[0], report.group_rows(close[:1])[0]) == "not tested (1 seed)"


def test_summary_picks_and_tests_the_best_baseline_per_metric(tmp_path):
    """The best baseline in R@10 may be another row than in N@10, and a significant gain in N@10 may come with
    none in R@10: each metric names its own best baseline and gets its own verdict."""
    records = [_record("Base", 0, 0.030, recall=0.060), _record("Base", 1, 0.032, recall=0.062)]
    records += [_record("Recaller", 0, 0.020, recall=0.078), _record("Recaller", 1, 0.022, recall=0.086)]
    records += [_record("New", 0, 0.040, recall=0.084), _record("New", 1, 0.042, recall=0.086)]
    suite = {"summary": True, "proposed": "New", "baselines": ["Base", "Recaller"]}
    summary, lines = _summary_lines(records, suite, tmp_path)
    line = lines["d"]
    assert (line["R@10"], line["N@10"]) == ("0.0850 ± 0.0014", "0.0410 ± 0.0014")
    assert line["best baseline in N@10"] == "Base (2 seeds)" and line["its N@10"] == "0.0310 ± 0.0014"
    assert line["N@10 vs it"] == "+32.3%" and line["N@10 significance"].startswith("significant")
    assert line["best baseline in R@10"] == "Recaller (2 seeds)" and line["its R@10"] == "0.0820 ± 0.0057"
    assert line["R@10 vs it"] == "+3.7%"  # .085 vs .082
    # 2 sqrt(0.00566^2 + 0.00141^2) = 0.0117 > 0.003
    assert line["R@10 significance"] == "not significant (difference 0.0030 vs 2 std 0.0117)"
    # The text states what the rule computes: the spread of two single runs, not of two means.
    assert "sqrt(std_a²/n_a + std_b²/n_b)" in summary and "conservative" in summary


def test_head_to_head_sets_each_row_against_every_row_it_names_and_beside_its_published_numbers():
    records = [_record("Base", 0, 0.030, recall=0.080), _record("Base", 1, 0.032, recall=0.082)]
    records += [_record("New", 0, 0.040, recall=0.070), _record("New", 1, 0.042, recall=0.072)]
    records += [_record("Gen (text)", 0, 0.020, recall=0.050), _record("Other", 0, 0.050)]
    suite = {"summary": True, "proposed": "New", "baselines": ["Base"], "versus": {"Gen (text)": ["New", "Base"]}}
    references = {"d": [{"model": "Gen", "source": "its paper", "recall@10": 0.06, "ndcg@10": 0.025}]}
    lines = report.head_to_head_section({"main": suite}, {"main": records}, references)
    rows = [row.strip("| ").split(" | ") for row in lines if row.startswith("| d |")]
    versus = [dict(zip(report.VERSUS_HEADER, cells)) for cells in rows if len(cells) == len(report.VERSUS_HEADER)]
    assert [(line["ours"], line["against"]) for line in versus] == [
        ("New (2 seeds)", "Base (2 seeds)"),
        ("Gen (text) (1 seed)", "New (2 seeds)"),
        ("Gen (text) (1 seed)", "Base (2 seeds)"),
    ]  # "Other" is nobody's baseline
    assert versus[0]["R@10 vs it"] == "-12.3%" and versus[0]["N@10 vs it"] == "+32.3%"  # .071 vs .081, .041 vs .031
    assert versus[0]["R@10 significance"].startswith("significant") and versus[0]["its train+valid min"] == "10"
    assert versus[1]["N@10 significance"] == "not tested (1 seed)"
    published = [cells for cells in rows if len(cells) == len(report.PUBLISHED_HEADER)]
    assert published == [
        ["d", "Gen (text) (1 seed)", "0.0500", "0.0200", "10", "Gen (its paper)", "0.0600 / 0.0250", "-20.0%"]
    ]
    assert report.matches_published("RPG-style (text codes)", "RPG") and report.matches_published("RPG-style", "RPG")
    assert not report.matches_published("RPGX (text codes)", "RPG") and not report.matches_published("SASRec", "RPG")


def test_summary_suites_count_the_proposed_models_stage_one_among_the_baselines():
    """PRORecTokenizer retrieves on its own, so PRORec's gain must be measured against it too; a head-to-head line
    (`versus`) that named no run of the suite would silently vanish from RESULTS.md."""
    for path in sorted((BENCHMARKS / "suites").glob("*.yaml")):
        suite = yaml.safe_load(path.read_text())
        if not suite.get("summary"):
            continue
        models = {entry.get("label", entry["model"]): entry["model"] for entry in suite["runs"]}
        assert set(suite["baselines"]) <= set(models), path.name  # every baseline names a run of the suite
        assert "PRORecTokenizer" in {models[label] for label in suite["baselines"]}, path.name
        stage_ones = {
            f"{run}: stage 1 ({get_model(model).stage_one_model})"
            for run, model in models.items()
            if getattr(get_model(model), "stage_one_model", None)
        }
        for label, others in suite.get("versus", {}).items():  # head-to-head lines name runs or their stage 1
            assert label in models and set(others) <= set(models) | stage_ones, (path.name, label)


def test_precision_note_tells_bf16_float32_no_option_and_old_records_apart():
    record = _record("x", 0, 0.1)
    assert report.precision_note(record) == "not recorded"
    assert [report.precision_note({**record, "bf16": value}) for value in (True, False, None)] == ["on", "off", "–"]


def test_epoch_note_tells_early_stopping_from_a_cap_and_a_schedule_end():
    record = _record("x", 0, 0.1)
    assert report.epoch_note(record) == ""  # 8 of 10 epochs: stopped early
    record["epochs_run"] = 10
    assert report.epoch_note(record) == " (cap)"
    assert report.epoch_note({**record, "lr_schedule": "cosine"}) == " (schedule end)"


def test_the_epochs_column_shows_the_epoch_whose_weights_were_tested():
    record = _record("x", 0, 0.1)  # no curve (older records): the stored epoch
    assert report.best_epoch(record) == 3
    record.update(valid_curve=[[2, 0.03, 1.0], [3, 0.03, 2.0], [4, 0.02, 3.0]], best_valid_score=0.03)
    assert report.best_epoch(record) == 3
    record["valid_curve"][2][1] = 0.03  # a later tie replaced the kept weights
    assert report.best_epoch(record) == 4


def test_a_reused_stage_one_gets_a_row_only_when_no_other_record_shows_its_artifact():
    def stage_one(path, reused):
        return {**_record("ignored", 0, 0.05), "model": "PRORecTokenizer", "artifact": {"path": path}, "reused": reused}

    records = [
        {**_record("Tokenizer", 0, 0.045), "artifact": {"path": "a/tok0"}},
        {**_record("PRORec", 0, 0.04), "stage_one": stage_one("a/tok0", True)},  # the tokenizer row shows it
        {**_record("PRORec", 1, 0.04), "stage_one": stage_one("a/tok1", True)},  # resumed run: nothing else does
        {**_record("PRORec (no KD)", 1, 0.03), "stage_one": stage_one("a/tok1", True)},  # shown once already
        {**_record("PRORec", 2, 0.04), "stage_one": stage_one("a/tok2", False)},  # trained here
        {**_record("PRORec (no KD)", 2, 0.03), "stage_one": stage_one("a/tok2", True)},
    ]
    labels = [(r["label"], r["seed"]) for r in report.with_stage_one(records)]
    assert labels == [
        ("Tokenizer", 0),
        ("PRORec", 0),
        ("PRORec", 1),
        ("PRORec: stage 1 (PRORecTokenizer)", 0),
        ("PRORec (no KD)", 1),
        ("PRORec", 2),
        ("PRORec: stage 1 (PRORecTokenizer)", 0),
        ("PRORec (no KD)", 2),
    ]


def test_ablation_report_shows_stage_one_rows_and_changes_against_the_full_model(tmp_path):
    results, suites = tmp_path / "results", tmp_path / "suites"
    results.mkdir()
    suites.mkdir()
    full = {
        **_record("Full", 0, 0.04),
        "model": "PRORec",
        "valid_curve": [[0, 0.01, 70.0], [1, 0.03, 140.0]],
        "valid_metrics": [[0, {"recall@10": 0.05, "ndcg@10": 0.01}], [1, {"recall@10": 0.04, "ndcg@10": 0.03}]],
        "best_valid_score": 0.03,
        "stage_one": {**_record("ignored", 0, 0.05), "model": "PRORecTokenizer"},
    }
    records = [
        {**_record("Tok variant", 0, 0.045), "model": "PRORecTokenizer"},
        full,
        {**full, "seed": 1, "test_result": {"recall@10": 0.1, "ndcg@10": 0.06}},  # No KD has no seed 1
        {**_record("No KD", 0, 0.03), "model": "PRORec"},
    ]
    (results / "ablation.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    suite = {
        "no_published": True,
        "compare_to": {"PRORecTokenizer": "Full: stage 1 (PRORecTokenizer)", "PRORec": "Full"},
        "runs": [
            {"model": "PRORecTokenizer", "label": "Tok variant"},
            {"model": "PRORec", "label": "Full"},
            {"model": "PRORec", "label": "No KD"},
        ],
    }
    (suites / "ablation.yaml").write_text(yaml.safe_dump(suite))
    table = [
        line
        for line in report.build_report(results, suites, tmp_path / "plots").splitlines()
        if line.startswith("| ") and "N@10" not in line and "---" not in line
    ][:4]
    assert [line.split(" | ")[0] for line in table] == [
        "| Full: stage 1 (PRORecTokenizer)",
        "| Tok variant",
        "| Full",
        "| No KD",
    ]
    assert table[0].endswith("|  |") and table[2].endswith("|  |")  # a reference row is not compared with itself
    # against the same seed of the full model (.04), not its two-seed mean (.05)
    assert table[1].endswith("| -10.0% |") and table[3].endswith("| -25.0% |")
    assert (tmp_path / "plots" / "ablation-d-valid.png").stat().st_size > 0


def test_report_includes_domination_tables(tmp_path):
    folder = tmp_path / "results" / "domination" / "beauty-tokenizer"
    folder.mkdir(parents=True)
    rows = [{"code_source": "concat", "overlap_collab": 0.25, "overlap_semantic": 0.5, "purity": 0.8, "nmi": 0.6}]
    (folder / "domination.json").write_text(json.dumps({"k": 10, "rows": rows}))
    text = report.build_report(tmp_path / "results", tmp_path / "suites", tmp_path / "plots")
    assert "### beauty-tokenizer" in text and "| concat | 0.250 | 0.500 | 0.800 | 0.600 |" in text


def test_random_item_codes_are_unique_with_a_padding_row():
    codes = speed.random_item_codes(500, levels=2, codebook_size=4, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (501, 3) and (codes[0] == -1).all()
    assert len({tuple(row) for row in codes[1:].tolist()}) == 500


def test_scale_measurement_times_both_rankings(tmp_path):
    overrides = {
        "d_model": 16,
        "attention_heads": 2,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "d_ff": 32,
        "rqvae_codebook_size": 8,
        "history_tokens": "per_item",
    }
    (record,) = speed.measure_scale([300], users=8, batch_size=4, config=overrides)
    assert record["n_items"] == 300 and record["beam_seconds"] > 0 and record["full_sort_seconds"] > 0
    lines = speed.report_lines("speed", {}, [record], tmp_path)
    assert any(line.startswith("| 300 | 8 |") for line in lines)


def test_dataset_measurement_times_both_tiger_layouts_over_random_codes(fast_run_config):
    config = {
        **fast_run_config,
        "train_batch_size": 2,
        "d_model": 16,
        "attention_heads": 2,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "d_ff": 32,
        "hidden_size": 16,
        "inner_size": 32,
        "rqvae_codebook_size": 8,
    }
    paper = {"model": "TIGER", "label": "TIGER (paper layout)", "config_files": ["properties/layout/seq2seq.yaml"]}
    sasrec, tiger, tiger_paper = speed.measure_dataset(
        "tiny", ["SASRec", "TIGER", paper], train_batches=2, config=config, random_codes=True
    )
    assert not sasrec["random_codes"] and tiger["random_codes"] and tiger_paper["random_codes"]
    assert tiger["test_users"] == sasrec["test_users"] == tiger_paper["test_users"] == 40
    assert tiger["train_seconds_per_epoch"] > 0 and tiger_paper["train_seconds_per_epoch"] > 0
    lines = speed.report_lines("speed", {}, [sasrec, tiger, tiger_paper], pathlib.Path("unused"))
    assert any(line.startswith("| tiny | TIGER (random codes) | 40 |") for line in lines)
    assert any(line.startswith("| tiny | TIGER (paper layout) (random codes) | 40 |") for line in lines)


def test_serving_measurement_records_precache_lookup_and_online_latency(fast_run_config):
    from recbole_prorec.quick_start import run

    checkpoint = run("SASRec", "tiny", config_dict=fast_run_config)["saved_model_file"]
    record = serving.measure(checkpoint, "SASRec", k=5, workers=0, lookups=50, single_users=5)  # Ray: test_serve
    assert record["users"] == 40 and record["store_mb"] > 0 and record["precache_seconds"] > 0
    assert 0 < record["lookup_p50_ms"] <= record["lookup_p99_ms"] and record["online_p50_ms"] > 0
    lines = serving.report_lines("serving", {}, [record])
    assert any(line.startswith("| tiny | SASRec | 40 |") for line in lines)


def test_hits_by_popularity_buckets_targets_and_counts_the_users_each_model_alone_hits(monkeypatch):
    # 4 users; targets 1, 2, 2, 3 with 2, 7, 7, 150 training interactions
    targets, counts = torch.tensor([1, 2, 2, 3]), torch.tensor([0, 2, 7, 150])
    ranks = {"a.pth": torch.tensor([0, 10, 3, 40]), "b.pth": torch.tensor([9, 2, 30, 0])}
    top_is_last = {"a.pth": torch.tensor([False, True, True, True]), "b.pth": torch.zeros(4, dtype=torch.bool)}

    def fake_ranks(path, shift=0):
        # excluding the last input item lifts a's targets by one place where a put that item first
        lifted = ranks[path] - top_is_last[path].long()
        by_exclusion = dict(zip(hits_by_popularity.EXCLUSIONS, (ranks[path], lifted, lifted)))
        return hits_by_popularity.TargetRanks(path, by_exclusion, targets + shift, counts, top_is_last[path])

    monkeypatch.setattr(hits_by_popularity, "target_ranks", fake_ranks)
    result = hits_by_popularity.compare(["a.pth", "b.pth"], k=10)
    assert result["users_hit"] == {"both": 0.25, "only a.pth": 0.25, "only b.pth": 0.5}
    assert result["hit_at"]["a.pth"][1] == 0.25 and result["hit_at"]["b.pth"][50] == 1.0
    assert result["top_item_is_last_input_item"] == {"a.pth": 0.75, "b.pth": 0.0}
    as_evaluated, last_excluded = (result["if_excluded"][name] for name in hits_by_popularity.EXCLUSIONS[:2])
    assert as_evaluated["a.pth"]["recall@10"] == 0.5 and last_excluded["a.pth"]["recall@10"] == 0.75
    # hits at ranks 0 and 3; with the last input item excluded, at ranks 0, 9 and 2
    assert as_evaluated["a.pth"]["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert last_excluded["a.pth"]["ndcg@10"] == pytest.approx((1 + 1 / math.log2(11) + 1 / math.log2(4)) / 4)
    assert last_excluded["b.pth"] == as_evaluated["b.pth"]
    buckets = {tuple(b["train_interactions"]): (b["users"], b["hit@10"]) for b in result["by_target_popularity"]}
    assert buckets[(0, 4)] == (1, {"a.pth": 1.0, "b.pth": 1.0})
    assert buckets[(5, 9)] == (2, {"a.pth": 0.5, "b.pth": 0.5})
    assert buckets[(100, 150)] == (1, {"a.pth": 0.0, "b.pth": 1.0})
    monkeypatch.setattr(hits_by_popularity, "target_ranks", lambda path: fake_ranks(path, shift=path == "b.pth"))
    with pytest.raises(ValueError, match="test targets differ"):
        hits_by_popularity.compare(["a.pth", "b.pth"], k=10)
