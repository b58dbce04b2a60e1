"""The converter's atomic files load in RecBole and give the leave-one-out split the protocol expects."""

import random

from recbole.config import Config
from recbole.data import create_dataset, data_preparation

from recbole_prorec.data import convert


def test_recbole_loads_converted_files_and_tests_each_users_last_item(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # RecBole writes log/ and saved/ into the working directory
    rng = random.Random(0)
    items = [f"I{index}" for index in range(12)]
    sequences = {f"U{user}": rng.sample(items, rng.randint(5, 8)) for user in range(10)}
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "user_sequence.txt").write_text("".join(f"{u} {' '.join(seq)}\n" for u, seq in sequences.items()))
    convert(raw, tmp_path, "tiny-amazon")

    config = Config(
        model="SASRec",
        dataset="tiny-amazon",
        config_dict={
            "data_path": str(tmp_path),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
            "train_neg_sample_args": None,
            "loss_type": "CE",
            "MAX_ITEM_LIST_LENGTH": 20,
            "use_gpu": False,
            "show_progress": False,
        },
    )
    dataset = create_dataset(config)
    assert (dataset.user_num - 1, dataset.item_num - 1, dataset.inter_num) == (
        len(sequences),
        len({i for seq in sequences.values() for i in seq}),
        sum(map(len, sequences.values())),
    )
    _, valid_data, test_data = data_preparation(config, dataset)

    def targets(loader):
        """{user token: target item token} from a full-sort evaluation dataloader."""
        user_tokens = dataset.field2id_token[dataset.uid_field]
        item_tokens = dataset.field2id_token[dataset.iid_field]
        found = {}
        for interaction, _, positive_u, positive_i in loader:
            users = interaction[dataset.uid_field][positive_u]
            found.update(zip(user_tokens[users.numpy()], item_tokens[positive_i.numpy()]))
        return found

    assert targets(test_data) == {user: seq[-1] for user, seq in sequences.items()}
    assert targets(valid_data) == {user: seq[-2] for user, seq in sequences.items()}
