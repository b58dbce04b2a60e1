"""Where two models' test hits differ: hit@K per target-popularity bucket, and how many users each alone hits.

    python benchmarks/hits_by_popularity.py --checkpoints A.pth B.pth [--k 10] [--out results/hits/name.json]

Why: a summary metric says that stage 2 ranks below stage 1 at R@10, not where. This ranks every test user's
target under each checkpoint (full sort over every item, RecBole's protocol for sequential models: history items
are not excluded), buckets the targets by their number of training interactions, and counts the users both, one
or neither model hits at K, plus hit@K for several K. It also says how often the top item is the user's last
input item (never a test target in these 5-core datasets: a model that ties input and output item embeddings,
SASRec's family, spends its first slot on it), and what R@K and N@K would be if the ranking excluded that item,
or the whole input sequence: how much of a difference between two models is this protocol's doing. Same dataset
and split for every checkpoint (each is rebuilt from its own saved config).
"""

import argparse
import dataclasses
import json
import pathlib

import torch

from recbole_prorec.evaluate import load_data_and_model
from recbole_prorec.utils import write_atomically

POPULARITY_EDGES = (0, 5, 10, 20, 50, 100)
CUTOFFS = (1, 5, 10, 20, 50, 100)
EXCLUSIONS = ("none (RecBole's protocol)", "last input item", "every input item")


@dataclasses.dataclass
class TargetRanks:
    """One checkpoint's test ranking, users sorted by id."""

    label: str
    ranks: dict  # exclusion (EXCLUSIONS) -> 0-based rank of each user's target [U]
    targets: torch.Tensor  # [U] item ids
    train_counts: torch.Tensor  # [n_items] training interactions per item
    top_is_last: torch.Tensor  # [U] bool: the top-scored item is the last item of the user's input sequence


@torch.no_grad()
def target_ranks(checkpoint):
    """The `TargetRanks` of `checkpoint` on its test split, ranking every real item."""
    config, model, dataset, (train_data, _, test_data) = load_data_and_model(checkpoint)
    users, targets, top_is_last = [], [], []
    ranks = {exclusion: [] for exclusion in EXCLUSIONS}
    item_list, lengths = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"], config["ITEM_LIST_LENGTH_FIELD"]
    for interaction, _, positive_u, positive_i in test_data:
        scores = model.full_sort_predict(interaction).view(-1, dataset.item_num).float()
        scores[:, 0] = -torch.inf
        history = interaction[item_list][positive_u]  # [B, T], padding 0 (already -inf)
        last_items = history.gather(1, (interaction[lengths][positive_u] - 1).unsqueeze(1))  # [B, 1]
        excluded = {
            EXCLUSIONS[0]: scores,
            EXCLUSIONS[1]: scores.scatter(1, last_items, -torch.inf),
            EXCLUSIONS[2]: scores.scatter(1, history, -torch.inf),
        }
        target_scores = scores[positive_u, positive_i].unsqueeze(1)
        for exclusion, ranked in excluded.items():
            ranks[exclusion].append((ranked > target_scores).sum(1))
        targets.append(positive_i)
        users.append(interaction[config["USER_ID_FIELD"]][positive_u])
        top_is_last.append(scores.argmax(1) == last_items.squeeze(1))
    order = torch.cat(users).argsort()
    items = torch.as_tensor(train_data.dataset.inter_feat[config["ITEM_ID_FIELD"]].numpy())
    return TargetRanks(
        label=f"{config['model']} ({pathlib.Path(checkpoint).name})",
        ranks={exclusion: torch.cat(values)[order] for exclusion, values in ranks.items()},
        targets=torch.cat(targets)[order],
        train_counts=torch.bincount(items, minlength=dataset.item_num),
        top_is_last=torch.cat(top_is_last)[order],
    )


def recall_and_ndcg(ranks, k):
    """`{"recall@k", "ndcg@k"}` of 0-based target ranks (one target per user, as in leave-one-out)."""
    hits = (ranks < k).float()
    return {f"recall@{k}": float(hits.mean()), f"ndcg@{k}": float((hits / torch.log2(ranks.float() + 2)).mean())}


def compare(checkpoints, k):
    """The JSON-ready comparison of `checkpoints` at cutoff `k` (see the module docstring)."""
    runs = [target_ranks(path) for path in checkpoints]
    first = runs[0]
    for run in runs[1:]:
        if not torch.equal(run.targets, first.targets):
            raise ValueError(f"{run.label}: its test targets differ from {first.label}'s (another dataset or split)")
    as_evaluated = {run.label: run.ranks[EXCLUSIONS[0]] for run in runs}
    popularity = first.train_counts[first.targets]
    edges = [*POPULARITY_EDGES, int(popularity.max()) + 1]
    buckets = []
    for low, high in zip(edges, edges[1:]):
        members = (popularity >= low) & (popularity < high)
        hits = {label: float((ranks[members] < k).float().mean()) for label, ranks in as_evaluated.items()}
        buckets.append({"train_interactions": [low, high - 1], "users": int(members.sum()), f"hit@{k}": hits})
    result = {
        "k": k,
        "models": list(as_evaluated),
        "hit_at": {
            label: {c: float((ranks < c).float().mean()) for c in CUTOFFS} for label, ranks in as_evaluated.items()
        },
        "top_item_is_last_input_item": {run.label: float(run.top_is_last.float().mean()) for run in runs},
        "if_excluded": {
            exclusion: {run.label: recall_and_ndcg(run.ranks[exclusion], k) for run in runs} for exclusion in EXCLUSIONS
        },
        "by_target_popularity": buckets,
    }
    if len(runs) == 2:
        hit_a, hit_b = (ranks < k for ranks in as_evaluated.values())
        result["users_hit"] = {
            "both": float((hit_a & hit_b).float().mean()),
            f"only {runs[0].label}": float((hit_a & ~hit_b).float().mean()),
            f"only {runs[1].label}": float((~hit_a & hit_b).float().mean()),
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
