"""A finished search as tables: one row per trial from Ray's results, CSV and Markdown, and the best config.

Rows hold validation metrics only; the one test result of a search, that of the chosen configuration, is kept
apart (`SearchResult.best_test`) and written only in the best configuration's summary.
"""

import csv
import dataclasses
import io
import json
import logging
import pathlib

import yaml

from recbole_prorec.tune.space import nested_get, plain
from recbole_prorec.utils import write_atomically

logger = logging.getLogger(__name__)

TEST_LABEL = "test (best configuration only)"


@dataclasses.dataclass
class SearchResult:
    """What `search` returns and writes."""

    rows: list  # One dict per trial, best validation metric first; validation metrics only.
    best: dict = None  # The chosen row (see `best_row`); None when no trial has a validation metric.
    best_test: dict = dataclasses.field(default_factory=dict)  # Test metrics of best's checkpoint ({}: none).


def _trial_status(result):
    if result.error is not None:
        return "error"
    metrics = result.metrics or {}
    if "checkpoint" in metrics:  # only the final report of a trial that trained to the end names it
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
            "config": {key: plain(nested_get(result.config or {}, key)) for key in plan.sampled},
            "best_epoch": None,
            "epochs_trained": metrics.get("epochs_trained"),
            "valid": {},
            "time_s": metrics.get("time_total_s"),
            "error": _error_line(result.error) if result.error is not None else None,
            "path": result.path,
            "checkpoint": None,
            "full_config": {**plain(result.config or {}), **plan.trial_overrides},
        }
        if status == "completed":
            row["best_epoch"] = metrics["best_epoch"]
            row["checkpoint"] = metrics["checkpoint"]
            row["valid"] = {k[len("valid_") :]: v for k, v in metrics.items() if k.startswith("valid_")}
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


def best_row(rows):
    """The best completed trial (else the best with a validation metric); None if none."""
    candidates = [row for row in rows if row["status"] == "completed"] or [row for row in rows if row["valid"]]
    return candidates[0] if candidates else None


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


def _markdown_row(cells):
    return "| " + " | ".join(_format(cell) or "–" for cell in cells).replace("\n", " ") + " |"


def results_csv(rows, plan):
    """CSV text: one column per metric and per sampled key (`config/<key>`); blanks where a value is missing."""
    valid_names = _metric_names(rows, "valid", plan.metric[len("valid_") :])
    config_names = _metric_names(rows, "config")
    header = ["rank", "trial", "status", "best_epoch", "epochs_trained"] + [f"valid_{n}" for n in valid_names]
    header += ["time_s"] + [f"config/{n}" for n in config_names] + ["error", "path"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow(
            [row["rank"], row["trial"], row["status"], row["best_epoch"], row["epochs_trained"]]
            + [row["valid"].get(n) for n in valid_names]
            + [row["time_s"]]
            + [json.dumps(row["config"].get(n)) for n in config_names]
            + [row["error"], row["path"]]
        )
    return buffer.getvalue()


def results_markdown(rows, plan, title):
    """Markdown table: the tuned validation metric, time, status and sampled config of every trial."""
    valid_key = plan.metric[len("valid_") :]
    header = ["rank", "trial", "status", "best epoch", f"valid {valid_key}", "time (s)", "config"]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        config = ", ".join(f"{key}={_format(value)}" for key, value in row["config"].items())
        status = row["status"] + (f": {row['error']}" if row["error"] else "")
        cells = [row["rank"], row["trial"], status, row["best_epoch"], row["valid"].get(valid_key), row["time_s"]]
        lines.append(_markdown_row(cells + [config]))
    return "\n".join(lines) + "\n"


def _best_metric_names(result, plan):
    """The tuned metric first, then the best trial's other validation metrics, then any other test metric."""
    names = _metric_names([result.best], "valid", plan.metric[len("valid_") :])
    return names + [name for name in result.best_test if name not in names]


def _test_line(result, plan):
    best, test = result.best, result.best_test
    if test:
        names = [name for name in _best_metric_names(result, plan) if name in test]
        return f"{TEST_LABEL}: " + ", ".join(f"{name} {_format(test[name])}" for name in names)
    return f"{TEST_LABEL}: none, trial {best['trial']} left no checkpoint ({best['status']})"


def best_markdown(result, plan):
    """Markdown section of the chosen configuration: its validation metrics beside its test metrics."""
    best, valid_key = result.best, plan.metric[len("valid_") :]
    lines = [f"## Best configuration: trial {best['trial']} ({best['status']}), chosen on valid {valid_key}", ""]
    names = _best_metric_names(result, plan)
    lines += ["| | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    lines.append(_markdown_row(["valid"] + [best["valid"].get(name) for name in names]))
    if result.best_test:
        lines.append(_markdown_row([TEST_LABEL] + [result.best_test.get(name) for name in names]))
    else:
        lines += ["", _test_line(result, plan)]
    if best["checkpoint"]:
        lines += ["", f"Checkpoint: `{best['checkpoint']}`; config: `best_config.yaml`."]
    return "\n".join(lines) + "\n"


def best_config(result, plan, space_file):
    """YAML text of the chosen configuration (plain RecBole keys; its metrics in the header comment)."""
    best, valid_key = result.best, plan.metric[len("valid_") :]
    values = {key: best["full_config"][key] for key in plan.space_keys if key in best["full_config"]}
    values.update(plan.best_config_base)
    header = [
        f"# Best trial {best['trial']} ({best['status']}) of a Ray Tune search over {space_file}:",
        f"# valid {valid_key} {_format(best['valid'].get(valid_key))}, best epoch {best['best_epoch']}.",
        f"# {_test_line(result, plan)}",
    ]
    if best["checkpoint"]:
        header.append(f"# checkpoint: {best['checkpoint']}")
    return "\n".join(header) + "\n" + yaml.safe_dump(values, sort_keys=False)


def write_results(result, plan, settings):
    """results.csv, results.md and best_config.yaml in the experiment folder, each written atomically."""
    folder = settings.experiment_dir
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "results.csv", results_csv(result.rows, plan))
    title = f"{settings.model} on {settings.dataset}: {len(result.rows)} trials, sorted by {plan.metric}"
    markdown = results_markdown(result.rows, plan, title)
    if result.best is not None:
        markdown += "\n" + best_markdown(result, plan)
        write_atomically(folder / "best_config.yaml", best_config(result, plan, settings.space_file))
    write_atomically(folder / "results.md", markdown)
    for row in result.rows:
        if row["status"] == "error":
            logger.error(
                f"Trial {row['trial']} failed ({row['error']}) with config {row['full_config']}; "
                f"traceback in {row['path']}/error.txt"
            )
