"""Regenerate `benchmarks/RESULTS.md` and the PNG plots from `benchmarks/results/*.jsonl`.

    python benchmarks/report.py

Every number in RESULTS.md comes from a run record (or, for rows labelled "published", from
`benchmarks/reference.yaml`, transcribed from the papers; see docs/design.md). Tables show mean +- std over
seeds, the best of our rows per column in bold and, where a suite names a `proposed` model and its `baselines`,
the proposed model's change over the best baseline in %; a head-to-head section sets the proposed model against
every baseline (and any row a suite's `versus` names against its list) and our rows beside the published ones.
"""

import argparse
import collections
import json
import pathlib
import statistics

import common
import yaml
from common import BENCHMARKS

from recbole_prorec.quick_start import kept_epoch
from recbole_prorec.utils import write_atomically

METRICS = ["recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20"]
SHORT = {"recall": "R", "ndcg": "N"}
# The summary compares ours with the best baseline in each of these metrics separately (see `summary_section`).
SUMMARY_METRICS = ["recall@10", "ndcg@10"]


def short_name(metric):
    name, k = metric.split("@")
    return f"{SHORT.get(name, name)}@{k}"


# Columns of the summary table: dataset, ours (one per summary metric), per summary metric the best baseline in it
# with the comparison (4 each), TIGER published (2). Names are unique so a line reads back as {column: cell}.
SUMMARY_HEADER = [
    "dataset",
    "ours",
    *[short_name(metric) for metric in SUMMARY_METRICS],
    *[
        column
        for short in map(short_name, SUMMARY_METRICS)
        for column in (f"best baseline in {short}", f"its {short}", f"{short} vs it", f"{short} significance")
    ],
    "TIGER published R@10 / N@10",
    "N@10 vs TIGER published",
]


def read_records(results_dir):
    """{suite: [record, ...]} from every JSONL file, with file:line in the error for a broken line."""
    return {path.stem: common.read_records(path) for path in sorted(pathlib.Path(results_dir).glob("*.jsonl"))}


def load_yaml(path):
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def mean_std(values):
    """(mean, std or None for a single seed)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def markdown_row(cells):
    return "| " + " | ".join(cells) + " |"


def markdown_table(header, lines):
    """A Markdown table: the header, its rule, the (already formatted) `lines`, a blank line."""
    return [markdown_row(header), "|" + "---|" * len(header), *lines, ""]


def percent_change(ours, theirs):
    """'+x.x%': `ours` against `theirs` (nonzero)."""
    return f"{100.0 * (ours - theirs) / theirs:+.1f}%"


def format_value(mean, std, bold=False):
    if mean is None:
        return "–"
    text = f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
    return f"**{text}**" if bold else text


def _artifact_path(result):
    return (result.get("artifact") or {}).get("path")


def with_stage_one(records):
    """`records` plus, for each two-stage run that reports its stage 1, that stage's result as a row of its own.

    A stage 1 reused from the cache (`"reused"`) gets a row only when no other record shows the run that wrote that
    artifact (a tokenizer row of its own, or a run that trained it): a run resumed after its stage 1 keeps its
    stage-1 row, and variants sharing one tokenizer do not repeat it.
    """
    shown = {_artifact_path(r) for r in records} | {
        _artifact_path(r["stage_one"]) for r in records if r.get("stage_one") and not r["stage_one"].get("reused")
    }
    shown.discard(None)
    expanded = []
    for record in records:
        expanded.append(record)
        stage_one = record.get("stage_one")
        if stage_one and stage_one.get("reused"):
            if _artifact_path(stage_one) in shown:
                continue
            shown.add(_artifact_path(stage_one))
        if stage_one:
            expanded.append(
                {
                    **stage_one,
                    "label": f"{record['label']}: stage 1 ({stage_one['model']})",
                    "stage_one_of": record["label"],
                    "git_commit": record.get("git_commit"),
                    "finished_at": record.get("finished_at"),
                }
            )
    return expanded


def precision_note(record):
    """'on' / 'off' for a run whose record says whether bf16 autocast was on; '–' for a model without the option."""
    if "bf16" not in record:
        return "not recorded"
    return {True: "on", False: "off"}.get(record["bf16"], "–")


def epoch_note(record):
    """'' when early stopping ended the run; ' (schedule end)' when it ran to the end of a learning-rate schedule
    that decays to zero there (nothing left to learn at that rate); ' (cap)' when it hit an epoch cap."""
    if record["epochs_run"] < record.get("max_epochs", 1e9):
        return ""
    return " (schedule end)" if record.get("lr_schedule") == "cosine" else " (cap)"


def best_epoch(record):
    """The epoch whose weights were tested: the last tie of the record's validation curve, since records written
    before `kept_epoch` existed name the first; the recorded epoch when the curve holds none (a resumed run)."""
    tied = kept_epoch(record.get("valid_curve") or [], record.get("best_valid_score"))
    return record["best_valid_epoch"] if tied is None else tied


def group_rows(records):
    """Our table rows for one dataset: per label, metric means/stds over seeds plus run facts, in record order."""
    by_label = collections.OrderedDict()
    for record in with_stage_one(records):
        by_label.setdefault(record["label"], []).append(record)
    rows = []
    for label, runs in by_label.items():
        row = {
            "label": label,
            "model": runs[0].get("model", label),
            "seeds": sorted(r["seed"] for r in runs),
            "runs": runs,
        }
        for metric in METRICS:
            row[metric] = mean_std([r["test_result"][metric] for r in runs if metric in r["test_result"]])
        row["epochs"] = ", ".join(f"{best_epoch(r)}/{r['epochs_run']}{epoch_note(r)}" for r in runs)
        row["train_s"] = mean_std([r["train_seconds_per_epoch"] for r in runs])[0]
        row["eval_s"] = mean_std([r["test_eval_seconds"] for r in runs])[0]
        row["fit_s"] = mean_std(
            [(r["train_seconds_per_epoch"] + r["valid_seconds_per_epoch"]) * r["epochs_run"] for r in runs]
        )[0]
        row["rss"] = max(r["peak_rss_mb"] for r in runs)
        rows.append(row)
    return rows


def best_baseline(rows, baselines, metric="ndcg@10"):
    """The row of `baselines` with the highest mean `metric` (None when none ran)."""
    candidates = [row for row in rows if row["label"] in baselines and row[metric][0] is not None]
    return max(candidates, key=lambda row: row[metric][0], default=None)


def improvement(rows, proposed, baselines):
    """{metric: % change of `proposed` over the best of `baselines`} where both have the metric."""
    by_label = {row["label"]: row for row in rows}
    if proposed not in by_label:
        return {}
    change = {}
    for metric in METRICS:
        ours = by_label[proposed][metric][0]
        best = best_baseline(rows, baselines, metric)
        if ours is not None and best:
            change[metric] = 100.0 * (ours - best[metric][0]) / best[metric][0]
    return change


def significance(ours, theirs, metric="ndcg@10"):
    """Whether two rows differ in `metric` by more than 2 * sqrt(std_a^2 + std_b^2), in words.

    std is each row's sample std over its seeds, so sqrt(std_a^2 + std_b^2) is the std of the difference between
    two single runs (one seed of each), not of the difference of the two means (that is
    sqrt(std_a^2/n_a + std_b^2/n_b), about sqrt(n) times smaller): the rule is conservative, stricter than a test
    on the means. It is kept because it is the project's stated criterion ("more than two standard deviations of
    the difference"). With fewer than two seeds in either row there is no std, and nothing is called significant.
    """
    (mean_a, std_a), (mean_b, std_b) = ours[metric], theirs[metric]
    if std_a is None or std_b is None:
        return f"not tested ({min(len(ours['seeds']), len(theirs['seeds']))} seed)"
    threshold = 2 * (std_a**2 + std_b**2) ** 0.5
    verdict = "significant" if abs(mean_a - mean_b) > threshold else "not significant"
    return f"{verdict} (difference {abs(mean_a - mean_b):.4f} vs 2 std {threshold:.4f})"


def seed_count(row):
    """'1 seed' / '3 seeds'."""
    count = len(row["seeds"])
    return f"{count} seed" if count == 1 else f"{count} seeds"


def comparison_cells(ours, best, metric):
    """The summary's cells for one metric: `best` (the best baseline in `metric`, so it may differ per metric),
    its value, ours against it in % and the significance verdict; dashes when no baseline has the metric."""
    if best is None or ours[metric][0] is None:
        return ["–"] * 4
    return [
        f"{best['label']} ({seed_count(best)})",
        format_value(*best[metric]),
        percent_change(ours[metric][0], best[metric][0]),
        significance(ours, best, metric),
    ]


def summary_section(suites, records, references):
    """One line per dataset of the suites marked `summary: true`: the proposed model, then for each summary metric
    the best of our baselines in that metric and the comparison with it (a gain in N@10 says nothing about R@10),
    then the published TIGER row and N@10 against it."""
    lines = []
    for suite_name, suite in suites.items():
        if not suite.get("summary"):
            continue
        proposed, baselines = suite["proposed"], suite.get("baselines", [])
        suite_records = records.get(suite_name, [])
        datasets = suite.get("datasets") or sorted({r["dataset"] for r in suite_records})
        for dataset in datasets:
            rows = group_rows([r for r in suite_records if r["dataset"] == dataset])
            ours = next((row for row in rows if row["label"] == proposed), None)
            bests = {metric: best_baseline(rows, baselines, metric) for metric in SUMMARY_METRICS}
            tiger = next((ref for ref in references.get(dataset, []) if ref["model"] == "TIGER"), None)
            if ours is None or not any(bests.values()):
                # Keep the dataset visible: a missing line would read as if the suite did not exist.
                missing = proposed if ours is None else "every baseline"
                # dataset and message, blanks up to the two published-TIGER cells added below
                cells = [dataset, f"{missing}: not run yet", *["–"] * (len(SUMMARY_HEADER) - 4)]
            else:
                cells = [dataset, f"{proposed} ({seed_count(ours)})"]
                cells += [format_value(*ours[metric]) for metric in SUMMARY_METRICS]
                for metric in SUMMARY_METRICS:
                    cells += comparison_cells(ours, bests[metric], metric)
            published = f"{tiger['recall@10']:.4f} / {tiger['ndcg@10']:.4f}" if tiger else "–"
            against_published = "–"
            if tiger and ours is not None:
                against_published = percent_change(ours["ndcg@10"][0], tiger["ndcg@10"])
            cells += [published, against_published]
            lines.append(markdown_row(cells))
    if not lines:
        return []
    return [
        "## Summary",
        "",
        "Test metrics, mean ± sample std over seeds. For each of R@10 and N@10, ours is compared with the best of",
        "the suite's baselines in that metric (listed in the suite's section below), so the two may be different",
        "rows. A difference counts as significant when it exceeds 2·sqrt(std_a² + std_b²): twice the std of the",
        "difference between two single runs, not between the two means (sqrt(std_a²/n_a + std_b²/n_b)), so the",
        "rule is conservative, stricter than a test on the means.",
        "",
        *markdown_table(SUMMARY_HEADER, lines),
    ]


VERSUS_HEADER = [
    "dataset",
    "ours",
    "against",
    "its train+valid min",
    *[
        column
        for short in map(short_name, SUMMARY_METRICS)
        for column in (f"its {short}", f"{short} vs it", f"{short} significance")
    ],
]
PUBLISHED_HEADER = [
    "dataset",
    "ours",
    *map(short_name, SUMMARY_METRICS),
    "train+valid min",
    "published",
    "its R@10 / N@10",
    "N@10 vs it",
]


def versus_cells(ours, other):
    """A head-to-head line's cells after dataset and ours: the other row, its minutes, and per summary metric its
    value, ours against it in % and the verdict."""
    cells = [f"{other['label']} ({seed_count(other)})", f"{other['fit_s'] / 60:.0f}"]
    for metric in SUMMARY_METRICS:
        if ours[metric][0] is None or not other[metric][0]:
            cells += ["–"] * 3
            continue
        cells += [
            format_value(*other[metric]),
            percent_change(ours[metric][0], other[metric][0]),
            significance(ours, other, metric),
        ]
    return cells


def matches_published(label, model):
    """Whether our row `label` runs the published `model`: the same name, the name and a note in parentheses, or
    our reimplementation of its recipe named `<model>-style` (RPG-style: RPG's recipe over our codes)."""
    return label in (model, f"{model}-style") or label.startswith((f"{model} (", f"{model}-style ("))


def published_lines(dataset, rows, references):
    """Lines of PUBLISHED_HEADER: each of our `rows` beside every published row of the same model."""
    lines = []
    for row in rows:
        for ref in (ref for ref in references.get(dataset, []) if matches_published(row["label"], ref["model"])):
            ours, theirs = row["ndcg@10"][0], ref.get("ndcg@10")
            cells = [dataset, f"{row['label']} ({seed_count(row)})"]
            cells += [format_value(*row[metric]) for metric in SUMMARY_METRICS]
            cells += [f"{row['fit_s'] / 60:.0f}", f"{ref['model']} ({ref['source']})"]
            cells.append(" / ".join(f"{ref[m]:.4f}" if m in ref else "–" for m in ("recall@10", "ndcg@10")))
            cells.append(percent_change(ours, theirs) if ours is not None and theirs else "–")
            lines.append(markdown_row(cells))
    return lines


def head_to_head_section(suites, records, references):
    """For each dataset of a `summary: true` suite, (1) the proposed model against every baseline, and each row that
    the suite's `versus` names ({label: [labels]}) against every row it lists, each metric with its own verdict;
    (2) each of our rows beside the published numbers of the same model (reference.yaml), N@10 against them."""
    versus_lines, beside_published = [], []
    for suite_name, suite in suites.items():
        if not suite.get("summary"):
            continue
        versus = {suite["proposed"]: suite.get("baselines", []), **suite.get("versus", {})}
        suite_records = records.get(suite_name, [])
        for dataset in suite.get("datasets") or sorted({r["dataset"] for r in suite_records}):
            rows = {row["label"]: row for row in group_rows([r for r in suite_records if r["dataset"] == dataset])}
            for label, others in versus.items():
                if label not in rows:
                    continue
                ours = rows[label]
                for other in (rows[name] for name in others if name in rows):
                    cells = [dataset, f"{label} ({seed_count(ours)})", *versus_cells(ours, other)]
                    versus_lines.append(markdown_row(cells))
            beside_published += published_lines(dataset, rows.values(), references)
    if not versus_lines and not beside_published:
        return []
    lines = [
        "## Head to head",
        "",
        "The proposed model against every baseline, and each row a suite's `versus` names against the rows it lists,",
        "with the summary's significance rule; then our rows beside the published numbers of the same model.",
        "Minutes are training + validation per run, as in the suites' tables (stage 2 only for two-stage rows).",
        "",
        *markdown_table(VERSUS_HEADER, versus_lines),
    ]
    return lines + (markdown_table(PUBLISHED_HEADER, beside_published) if beside_published else [])


def change_against(row, rows, compare_to, metric="ndcg@10"):
    """ "+x.x%": `row`'s `metric` against the row that `compare_to` names for its model, both averaged over the
    seeds they share (a one-seed lever against its own seed of the full model, not the full model's mean); ""
    when none applies."""
    reference = next((r for r in rows if r["label"] == compare_to.get(row["model"])), None)
    if reference is None or reference is row:
        return ""
    ours, theirs = (
        {run["seed"]: run["test_result"].get(metric) for run in r["runs"] if run.get("test_result")}
        for r in (row, reference)
    )
    shared = [seed for seed in ours if seed in theirs and ours[seed] is not None and theirs[seed] is not None]
    if not shared:
        return ""
    mine, base = (statistics.fmean(values[seed] for seed in shared) for values in (ours, theirs))
    return percent_change(mine, base) if base else ""


def metric_table(rows, published, compare_to=None):
    """Markdown: one line per model (ours first, best bold), then the published reference rows.

    `compare_to` ({model: row label}, an ablation suite's full model per model class) adds a column with each
    row's N@10 change against that row, over the seeds both have.
    """
    best = {m: max((row[m][0] for row in rows if row[m][0] is not None), default=None) for m in METRICS}
    header = (
        ["model", "seeds"]
        + [short_name(m) for m in METRICS]
        + ["best/run epochs per seed", "s / train epoch", "train+valid min", "test eval s", "peak RSS MB"]
        + (["N@10 vs full (same seeds)"] if compare_to else [])
    )
    lines = markdown_table(header, [])[:-1]  # header and rule
    for row in rows:
        cells = [row["label"], str(len(row["seeds"]))]
        cells += [format_value(*row[m], bold=row[m][0] is not None and row[m][0] == best[m]) for m in METRICS]
        cells += [
            row["epochs"],
            f"{row['train_s']:.0f}",
            f"{row['fit_s'] / 60:.1f}",
            f"{row['eval_s']:.0f}",
            f"{row['rss']:.0f}",
        ]
        cells += [change_against(row, rows, compare_to)] if compare_to else []
        lines.append(markdown_row(cells))
    for ref in published:
        cells = [f"{ref['model']} (published: {ref['source']})", "–"]
        cells += [f"{ref[m]:.4f}" if m in ref else "–" for m in METRICS] + ["–"] * (len(header) - 2 - len(METRICS))
        lines.append(markdown_row(cells))
    return "\n".join(lines)


def new_figure(figsize, ncols=1):
    """`(fig, ax)` (`ncols` axes) on matplotlib's file-only backend (no display on the benchmark machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, ncols=ncols)


def save_figure(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metrics(rows, title, path):
    """Grouped bars: R@10, N@10, R@20, N@20 per model (error bars = std over seeds)."""
    shown = ["recall@10", "ndcg@10", "recall@20", "ndcg@20"]
    fig, ax = new_figure((max(6, 1.2 * len(rows) + 2), 4))
    width = 0.8 / len(shown)
    for index, metric in enumerate(shown):
        means = [row[metric][0] or 0 for row in rows]
        stds = [row[metric][1] or 0 for row in rows]
        positions = [i + (index - (len(shown) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(positions, means, width, yerr=stds, label=short_name(metric))
    ax.set_xticks(range(len(rows)), [row["label"] for row in rows], rotation=20, ha="right")
    ax.set_ylabel("test metric")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def plot_valid_curves(rows, title, path):
    """Validation metric of each row's first seed per epoch and per second of training; False without curves.

    Older records carry `[epoch, score]` points only: they are drawn against epochs alone. Records with every
    metric per validation (`valid_metrics`) add a third panel, R@10 per epoch: early stopping reads valid_metric
    alone, and a run may trade recall for it as it trains.
    """
    runs = [(row["label"], row["runs"][0]) for row in rows if row["runs"][0].get("valid_curve")]
    if not runs:
        return False
    with_recall = any(record.get("valid_metrics") for _, record in runs)
    fig, panels = new_figure((18 if with_recall else 12, 4), ncols=3 if with_recall else 2)
    by_epoch, by_time = panels[:2]
    for label, record in runs:
        curve = record["valid_curve"]
        scores = [point[1] for point in curve]
        (line,) = by_epoch.plot([point[0] for point in curve], scores, marker=".", label=label)
        if all(len(point) > 2 for point in curve):  # the same colour per run in every panel
            by_time.plot([point[2] / 60 for point in curve], scores, marker=".", color=line.get_color())
        if record.get("valid_metrics"):
            epochs, metrics = zip(*record["valid_metrics"])
            recall = [m["recall@10"] for m in metrics]
            panels[2].plot(epochs, recall, marker=".", color=line.get_color(), label=label)
    by_epoch.set_xlabel("epoch")
    by_time.set_xlabel("minutes of training and validation")
    for axes in (by_epoch, by_time):
        axes.set_ylabel("validation score (valid_metric)")
    if with_recall:
        panels[2].set_xlabel("epoch")
        panels[2].set_ylabel("validation R@10")
        panels[2].legend(fontsize="x-small")  # colours repeat across many rows: name the few drawn here
    by_epoch.set_title(title)
    by_epoch.legend(fontsize="x-small")
    save_figure(fig, path)
    return True


def per_level(values, digits=2):
    """One cell for a per-level statistic: the values, comma-separated, at `digits` decimals."""
    return ", ".join(f"{value:.{digits}f}" for value in values)


def artifact_stats(row):
    """The code statistics of a row's first run: its own artifact's, else its stage 1's; None if not recorded."""
    record = row["runs"][0]
    return (record.get("artifact") or {}).get("stats") or ((record.get("stage_one") or {}).get("artifact") or {}).get(
        "stats"
    )


def code_table(rows):
    """Markdown lines: the item-code statistics of every row whose record carries its artifact's stats."""
    lines = []
    for row in rows:
        stats = artifact_stats(row)
        if not stats:
            continue
        utilization = per_level(stats["utilization"])
        perplexity = per_level(stats["perplexity"], digits=0)
        lines.append(
            f"| {row['label']} | {stats['method']} | {stats['levels']} x {stats['codebook_size']} | "
            f"{stats['collision_rate_before']:.4f} → {stats['collision_rate_after']:.4f} | "
            f"{stats['max_collision_index']} | {utilization} | {perplexity} | "
            f"{stats.get('reconstruction_error', float('nan')):.4f} |"
        )
    if not lines:
        return []
    header = [
        "| codes of | quantizer | levels x codes | collision rate before → after | max collision index | "
        "utilization per level | perplexity per level | reconstruction MSE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return ["Item codes (first seed's artifact):", ""] + header + lines + [""]


def token_tie_table(rows):
    """Markdown lines: how close each code of a token-space RQ-VAE (SemConv) sits to its language-model token row,
    tied or not (the untied codebooks are matched to token rows after training, so the two compare)."""
    lines = []
    for row in rows:
        stats = artifact_stats(row)
        if not stats or "token_cosine_per_level" not in stats:
            continue
        tie = f"weight {stats['tie_weight']:g}" if stats.get("tied") else "not tied"
        loss = stats.get("loss_first_epoch"), stats.get("loss_last_epoch")
        loss_cell = f"{loss[0]:.1f} → {loss[1]:.1f}" if None not in loss else "not recorded"
        lines.append(
            f"| {row['label']} | {tie} | {per_level(stats['utilization'])} | "
            f"{per_level(stats['token_scale_per_level'])} | {per_level(stats['token_distance_per_level'])} | "
            f"{per_level(stats['token_cosine_per_level'])} | {stats['token_row_gap']:.2f} | {loss_cell} |"
        )
    if not lines:
        return []
    header = [
        "| codes of | tie to token rows | code use per level | token scale per level | distance to its token row "
        "per level (token units) | cosine to its token row per level | token rows' gap to their nearest row | "
        "RQ-VAE loss first → last epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return ["Token-space codes (first seed's artifact):", ""] + header + lines + [""]


def suite_position(suite, row):
    """Rows in the suite's run order; a stage-1 row of a two-stage run comes before every stage-2 row."""
    order = [entry.get("label", entry["model"]) for entry in suite.get("runs", [])]
    if row["label"] in order:
        return order.index(row["label"])
    return -1 if row["runs"][0].get("stage_one_of") in order else len(order)


def training_section(suite_name, suite, records, references, plots_dir):
    lines = [f"## {suite_name}", "", suite.get("description", "")]
    for dataset in sorted({r["dataset"] for r in records}):
        rows = group_rows([r for r in records if r["dataset"] == dataset])
        rows.sort(key=lambda row: suite_position(suite, row))
        published = [ref for ref in references.get(dataset, []) if not suite.get("no_published")]
        lines += ["", f"### {dataset}", "", metric_table(rows, published, suite.get("compare_to")), ""]
        proposed = suite.get("proposed")
        if proposed:
            change = improvement(rows, proposed, suite.get("baselines", []))
            if change:
                against = ", ".join(b for b in suite.get("baselines", []) if b in {r["label"] for r in rows})
                lines.append(
                    f"{proposed} vs the best of ({against}) per column: "
                    + ", ".join(f"{short_name(m)} {v:+.1f}%" for m, v in change.items())
                )
                ours = next(row for row in rows if row["label"] == proposed)
                best = best_baseline(rows, suite.get("baselines", []))
                lines.append(f"N@10 against {best['label']}: {significance(ours, best)}.")
                lines.append("")
        plot = plots_dir / f"{suite_name}-{dataset}.png"
        plot_metrics(rows, f"{suite_name}: {dataset}", plot)
        lines += [f"![{suite_name} {dataset}](plots/{plot.name})", ""]
        curves = plots_dir / f"{suite_name}-{dataset}-valid.png"
        if plot_valid_curves(rows, f"{suite_name}: {dataset}, validation per epoch", curves):
            lines += [f"![{suite_name} {dataset} validation curves](plots/{curves.name})", ""]
        lines += code_table(rows)
        lines += token_tie_table(rows)
        lines += [
            "<details><summary>runs</summary>",
            "",
            "| model | seed | commit | config hash | bf16 | finished |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            for r in row["runs"]:
                lines.append(
                    f"| {r['label']} | {r['seed']} | {(r.get('git_commit') or '?')[:8]} | "
                    f"{r['config_hash']} | {precision_note(r)} | {r.get('finished_at', '?')} |"
                )
        lines += ["", "</details>", ""]
    return lines


def speed_section(suite_name, suite, records, plots_dir):
    import speed

    return speed.report_lines(suite_name, suite, records, plots_dir)


def serving_section(suite_name, suite, records):
    import serving

    return serving.report_lines(suite_name, suite, records)


def domination_section(path, results_dir):
    """Markdown for one `python -m recbole_prorec.analysis` output folder under results/domination/<name>/."""
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    k = table["k"]
    name = path.parent.name
    lines = [
        f"### {name}",
        "",
        f"Overlap of each item's top-{k} neighbours in the embedding that is quantized with its "
        f"top-{k} in the pure collaborative and pure semantic spaces; purity and NMI of first-level codes vs "
        "the items' first category.",
        "",
        f"| code source | overlap with collaborative @{k} | overlap with semantic @{k} | purity | NMI |",
        "|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        lines.append(
            f"| {row['code_source']} | {row['overlap_collab']:.3f} | {row['overlap_semantic']:.3f} | "
            f"{row['purity']:.3f} | {row['nmi']:.3f} |"
        )
    plot = path.with_name("domination.png")
    if plot.is_file():
        lines += ["", f"![domination {name}]({plot.relative_to(results_dir.parent).as_posix()})"]
    return lines + [""]


def build_report(results_dir=BENCHMARKS / "results", suites_dir=BENCHMARKS / "suites", plots_dir=BENCHMARKS / "plots"):
    records = read_records(results_dir)
    references = load_yaml(BENCHMARKS / "reference.yaml")
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/report.py` from `benchmarks/results/*.jsonl`; do not edit by hand.",
        "Rows marked *published* come from `benchmarks/reference.yaml` (the papers' numbers, sources in",
        "docs/design.md);",
        "every other number is a run of `python benchmarks/run.py`. Epochs are best-valid/run; *(cap)* marks a",
        "run that hit its epoch cap before early stopping fired, *(schedule end)* one that ran to the end of a",
        "cosine schedule (learning rate 0 there) without early stopping firing.",
        "Timing columns depend on the CPU and precision each run had: the *bf16* column of each suite's run list",
        "says whether the generative models ran under bfloat16 autocast (*on*) or in float32 (*off*); runs made",
        "before the record carried it show *not recorded* (those generative runs had bf16 on).",
        "",
    ]
    suites = {path.stem: load_yaml(path) for path in sorted(pathlib.Path(suites_dir).glob("*.yaml"))}
    lines += summary_section(suites, records, references)
    lines += head_to_head_section(suites, records, references)
    for suite_name, suite_records in records.items():
        suite = suites.get(suite_name, {})
        if suite.get("kind") == "speed":
            lines += speed_section(suite_name, suite, suite_records, plots_dir)
        elif suite.get("kind") == "serving":
            lines += serving_section(suite_name, suite, suite_records)
        else:
            lines += training_section(suite_name, suite, suite_records, references, plots_dir)
    dominations = sorted(pathlib.Path(results_dir).glob("domination/*/domination.json"))
    if dominations:
        lines += ["## Semantic-domination diagnostic (`python -m recbole_prorec.analysis`)", ""]
        for path in dominations:
            lines += domination_section(path, pathlib.Path(results_dir))
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(BENCHMARKS / "RESULTS.md"))
    args = parser.parse_args(argv)
    write_atomically(args.output, build_report())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
