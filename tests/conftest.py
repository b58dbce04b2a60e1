"""Shared fixtures: a tiny sequential dataset written as RecBole atomic files, and a clean working directory."""

import pathlib

import numpy as np
import pytest
import torch

from recbole_prorec import compat

compat.apply()  # the tests drive RecBole's Trainer directly, as a user does after calling compat.apply()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP spin-waits stall them on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_dataset(root, name="tiny", n_users=40, n_items=30, min_len=5, max_len=12, seed=0):
    """Users walk through item clusters in order, so sequences are learnable; items have titles."""
    rng = np.random.default_rng(seed)
    folder = pathlib.Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        start = int(rng.integers(n_items))
        items = [(start + step) % n_items for step in range(length)]
        lines += [f"u{user}\ti{item}\t{position}" for position, item in enumerate(items)]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    colours = ["red", "green", "blue"]
    item_lines = ["item_id:token\ttitle:token_seq\tbrand:token_seq\tcategories:token_seq"]
    item_lines += [
        f"i{item}\t{colours[item % 3]} widget number {item}\tbrand{item % 5}\tToys > {colours[item % 3]}"
        for item in range(n_items)
    ]
    (folder / f"{name}.item").write_text("\n".join(item_lines) + "\n")
    return folder


@pytest.fixture
def tiny_data_path(tmp_path, monkeypatch):
    """A data_path holding the `tiny` dataset; the test runs in tmp_path so RecBole's log/ and saved/ land there."""
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "data")
    return str(tmp_path / "data")


@pytest.fixture
def fast_run_config(tiny_data_path):
    """Overrides that make any run a few seconds long on the tiny dataset."""
    return {
        "data_path": tiny_data_path,
        "epochs": 1,
        "train_batch_size": 64,
        "eval_batch_size": 64,
        "show_progress": False,
        "use_gpu": False,
        "state": "WARNING",
    }
