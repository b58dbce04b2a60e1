"""Where two models' test hits differ: hit@K per target-popularity bucket, and how many users each alone hits.

    python benchmarks/hits_by_popularity.py --checkpoints A.pth B.pth [--k 10] [--out results/hits/name.json]

Why: a summary metric says that stage 2 ranks below stage 1 at R@10, not where. This ranks every test user's
target under each checkpoint (full sort over every item, RecBole's protocol for sequential models: history items
are not excluded), buckets the targets by their number of training interactions, and counts the users both, one
or neither model hits at K, plus hit@K for several K and how often the top item is the user's last input item
(never a test target in these datasets: a model that ties input and output item embeddings, SASRec's family,
spends its first slot on it). Same dataset and split for every checkpoint (each is rebuilt from its own saved
config).
"""

import argparse
import json
import pathlib

import torch

from recbole_prorec.evaluate import load_data_and_model
from recbole_prorec.utils import write_atomically

POPULARITY_EDGES = (0, 5, 10, 20, 50, 100)
CUTOFFS = (1, 5, 10, 20, 50, 100)


@torch.no_grad()
def target_ranks(checkpoint):
    """`(label, ranks [U], targets [U], train counts [n_items], top_is_last [U])`, users sorted by id: the 0-based
    rank of each test user's target among every real item, and whether the top-scored item is the last item of
    the user's input sequence."""
    config, model, dataset, (train_data, _, test_data) = load_data_and_model(checkpoint)
    users, ranks, targets, top_is_last = [], [], [], []
    item_list, lengths = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"], config["ITEM_LIST_LENGTH_FIELD"]
    for interaction, _, positive_u, positive_i in test_data:
        scores = model.full_sort_predict(interaction).view(-1, dataset.item_num).float()
        scores[:, 0] = -torch.inf
        target_scores = scores[positive_u, positive_i].unsqueeze(1)
        ranks.append((scores > target_scores).sum(1))
        targets.append(positive_i)
        users.append(interaction[config["USER_ID_FIELD"]][positive_u])
        last_items = interaction[item_list].gather(1, (interaction[lengths] - 1).unsqueeze(1)).squeeze(1)
        top_is_last.append(scores.argmax(1) == last_items[positive_u])
    order = torch.cat(users).argsort()
    items = torch.as_tensor(train_data.dataset.inter_feat[config["ITEM_ID_FIELD"]].numpy())
    counts = torch.bincount(items, minlength=dataset.item_num)
    return (
        f"{config['model']} ({pathlib.Path(checkpoint).name})",
        torch.cat(ranks)[order],
        torch.cat(targets)[order],
        counts,
        torch.cat(top_is_last)[order],
    )


def compare(checkpoints, k):
    """The JSON-ready comparison of `checkpoints` at cutoff `k` (see the module docstring)."""
    runs = [target_ranks(path) for path in checkpoints]
    targets, counts = runs[0][2], runs[0][3]
    for label, _, other_targets, *_ in runs[1:]:
        if not torch.equal(other_targets, targets):
            raise ValueError(f"{label}: its test targets differ from {runs[0][0]}'s (another dataset or split)")
    popularity = counts[targets]
    edges = [*POPULARITY_EDGES, int(popularity.max()) + 1]
    buckets = []
    for low, high in zip(edges, edges[1:]):
        members = (popularity >= low) & (popularity < high)
        hits = {label: float((ranks[members] < k).float().mean()) for label, ranks, *_ in runs}
        buckets.append({"train_interactions": [low, high - 1], "users": int(members.sum()), f"hit@{k}": hits})
    hit_sets = [ranks < k for _, ranks, *_ in runs]
    result = {
        "k": k,
        "models": [label for label, *_ in runs],
        "hit_at": {label: {c: float((ranks < c).float().mean()) for c in CUTOFFS} for label, ranks, *_ in runs},
        "top_item_is_last_input_item": {label: float(top_is_last.float().mean()) for label, *_, top_is_last in runs},
        "by_target_popularity": buckets,
    }
    if len(runs) == 2:
        first, second = hit_sets
        result["users_hit"] = {
            "both": float((first & second).float().mean()),
            f"only {runs[0][0]}": float((first & ~second).float().mean()),
            f"only {runs[1][0]}": float((~first & second).float().mean()),
        }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", required=True, help="RecBole checkpoints (.pth) of one dataset")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=pathlib.Path, help="also write the comparison here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = compare(args.checkpoints, args.k)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.out, text + "\n")


if __name__ == "__main__":
    main()
