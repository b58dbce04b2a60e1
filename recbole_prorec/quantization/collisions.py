"""Collision handling: TIGER's extra code level that makes every item's code tuple unique.

Reference: Rajput et al., "Recommender Systems with Generative Retrieval" (TIGER), NeurIPS 2023,
arXiv:2305.05065. Items whose ``L`` codes coincide get an extra token counting them 0, 1, 2, ... in
item (row) order; an item with a unique prefix gets 0.
"""

import numpy as np


def _prefix_groups(prefix_codes):
    """Group id per row ``[n]`` and group sizes, rows with equal code tuples sharing a group."""
    _, group, counts = np.unique(np.asarray(prefix_codes), axis=0, return_inverse=True, return_counts=True)
    return group.reshape(-1), counts


def collision_index(prefix_codes):
    """Rank of each item ``[n]`` among the items sharing its code tuple (stable: lower row ranks first)."""
    group, counts = _prefix_groups(prefix_codes)
    order = np.argsort(group, kind="stable")  # rows grouped, row order kept inside a group
    group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [n_groups]
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - group_start[group[order]]
    return rank.astype(np.int64)


def add_collision_level(prefix_codes):
    """``[n, L]`` codes -> ``[n, L + 1]`` codes whose rows are all distinct."""
    prefix_codes = np.asarray(prefix_codes, dtype=np.int64)
    return np.concatenate([prefix_codes, collision_index(prefix_codes)[:, None]], axis=1)


def collision_rate(codes):
    """Share of items whose code tuple is shared with at least one other item."""
    group, counts = _prefix_groups(codes)
    return float((counts[group] > 1).mean())
