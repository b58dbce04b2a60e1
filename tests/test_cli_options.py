"""Command-line overrides checked before the run (issue #33, point 11): a value of the wrong type, 0 epochs, a
dataset given as a path or a --json file that cannot be written is a one-line error (exit 2) naming the key and
what was expected, and no training starts."""

import json
import pathlib
import subprocess
import sys

import pytest

from recbole_prorec import cli
from recbole_prorec.options import OptionError, check_overrides

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def no_run(monkeypatch):
    """Fails the test if the CLI starts a run: every check below must happen before one."""

    def run(*args, **kwargs):
        pytest.fail("the run started before the bad option was refused")

    monkeypatch.setattr(cli, "run", run)


def one_line_error(capsys):
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error, error
    return error


@pytest.mark.parametrize(
    "model, arg, expected",
    [
        ("SASRec", "--epochs=abc", "--epochs=abc: expected int"),
        ("SASRec", "--learning_rate=fast", "--learning_rate=fast: expected float"),
        ("SASRec", "--show_progress=maybe", "--show_progress=maybe: expected bool"),
        ("SASRec", "--eval_args=full", "--eval_args=full: expected dict"),
        ("SASRec", "--topk=ten", "--topk=ten: expected int or list"),
        ("SASRec", "--n_layers=1.5", "--n_layers=1.5: expected int"),
        ("TIGER", "--bf16=sometimes", "--bf16=sometimes: expected bool or 'auto'"),
        ("PRORec", "--tokenizer_config={epochs: abc}", "--tokenizer_config.epochs=abc: expected int"),
        ("PRORec", "--tokenizer_config=[1]", "--tokenizer_config=[1]: expected dict"),
        ("SASRec", "--epochs=0", "--epochs=0: must be at least 1 (0 epochs would test an untrained model"),
        ("SASRec", "--train_batch_size=-4", "--train_batch_size=-4: must be at least 1"),
        ("SASRec", "--dataset=a/b", "--dataset=a/b: expected the name of a folder of atomic files under data_path"),
        ("SASRec", "--eval_args={split: {LS: x}", "--eval_args='{split: {LS: x}': expected dict"),  # not YAML
    ],
)
def test_a_bad_override_is_refused_before_the_run_naming_key_and_type(
    tiny_data_path, no_run, capsys, model, arg, expected
):
    args = [f"--model={model}", "--dataset=tiny", f"--data_path={tiny_data_path}", arg]
    assert cli.main(args) == 2
    error = one_line_error(capsys)
    assert expected in error


def test_the_error_names_the_file_that_documents_the_type(tiny_data_path, no_run, capsys):
    assert cli.main(["--model=SASRec", "--dataset=tiny", "--epochs=abc"]) == 2
    assert "(properties/" in one_line_error(capsys)


def test_a_dataset_path_says_how_to_write_it(no_run, capsys):
    assert cli.main(["--model=SASRec", "--dataset=data/beauty"]) == 2
    assert "--data_path=data --dataset=beauty" in one_line_error(capsys)


def test_malformed_command_lines_are_errors_with_exit_2(no_run, capsys):
    assert cli.main(["--model=SASRec", "stray"]) == 2
    assert "Unrecognized argument 'stray'" in one_line_error(capsys)
    assert cli.main(["--model=SASRec", "--epochs"]) == 2
    assert "--epochs has no value" in one_line_error(capsys)


@pytest.mark.parametrize("where", ["missing_folder", "under_a_file", "a_folder"])
def test_an_unwritable_json_path_fails_before_training(tiny_data_path, tmp_path, no_run, capsys, where):
    (tmp_path / "plain").write_text("x")
    path = {
        "missing_folder": tmp_path / "no" / "such" / "result.json",
        "under_a_file": tmp_path / "plain" / "result.json",
        "a_folder": tmp_path,
    }[where]
    assert cli.main(["--model=SASRec", "--dataset=tiny", f"--data_path={tiny_data_path}", f"--json={path}"]) == 2
    error = one_line_error(capsys)
    assert f"--json={path}" in error


def test_good_overrides_pass_and_numbers_for_text_options_become_text(tiny_data_path):
    overrides = {
        "gpu_id": 0,  # RecBole's gpu_id is a string ("0,1")
        "topk": 10,
        "learning_rate": 1,
        "torch_threads": None,
        "bf16": "auto",
        "clip_grad_norm": {"max_norm": 1.0},
        "tokenizer_config": {"epochs": 3, "code_source": "concat"},
        "some_option_no_file_documents": "anything",
        "user_inter_num_interval": cli.parse_value("[5,inf)"),  # RecBole's interval: not YAML, kept as text
    }
    checked = check_overrides("PRORec", "tiny", overrides)
    assert checked == {**overrides, "gpu_id": "0"}


def test_the_check_covers_every_option_the_run_reads(tiny_data_path):
    """Each documented option of RecBole and of ours is typed: a string for any int option is refused."""
    with pytest.raises(OptionError, match=r"--MAX_ITEM_LIST_LENGTH=long: expected int"):
        check_overrides("SASRec", "tiny", {"MAX_ITEM_LIST_LENGTH": "long"})
    with pytest.raises(OptionError, match=r"--code_levels=many: expected int \(properties/model/PRORecTokenizer"):
        check_overrides("PRORecTokenizer", "tiny", {"code_levels": "many"})
    with pytest.raises(OptionError, match=r"--weight_decay=heavy: expected float \(RecBole's properties/overall"):
        check_overrides("SASRec", "tiny", {"weight_decay": "heavy"})


def test_the_script_prints_one_line_and_no_traceback(tmp_path):
    """The real entry point, in a process of its own: exit status 2 and one line on stderr."""
    done = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_prorec.py"), "--model=SASRec", "--dataset=tiny", "--epochs=abc"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert lines == [lines[0]] and "--epochs=abc: expected int" in lines[0]


def test_a_writable_json_path_receives_the_result(fast_run_config, tmp_path, capsys):
    path = tmp_path / "result.json"
    args = ["--model=SASRec", "--dataset=tiny", f"--json={path}"] + [f"--{k}={v}" for k, v in fast_run_config.items()]
    assert cli.main(args) == 0
    assert json.loads(path.read_text())["model"] == "SASRec"
