"""Collision handling: TIGER's extra code level that makes every item's code tuple unique, or a repair inside the
last level when the number of levels is fixed.

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


def resolve_in_last_level(codes, last_level_distances):
    """``[n, L]`` codes -> ``[n, L]`` codes whose rows are all distinct, by changing only the last level.

    The first item (in row order) of every tuple keeps its codes, so unique tuples never change; every later
    item sharing a tuple moves to its nearest last-level code (``last_level_distances [n, K]``) that no item with
    the same first ``L - 1`` codes holds. For a fixed number of code tokens (SemConv's four), where the extra level
    of ``add_collision_level`` is not allowed. Raises when a prefix holds more items than the K codes.
    """
    codes = np.array(codes, dtype=np.int64)
    distances = np.asarray(last_level_distances, dtype=np.float64)
    group, counts = _prefix_groups(codes[:, :-1])
    if counts.max() > distances.shape[1]:
        raise ValueError(
            f"{int(counts.max())} items share their first {codes.shape[1] - 1} codes but the last level has only "
            f"{distances.shape[1]} codes: raise codebook_size (or code_levels) so the codes can be unique"
        )
    rank = collision_index(codes)
    taken = np.zeros((counts.size, distances.shape[1]), dtype=bool)  # [n_groups, K]
    taken[group[rank == 0], codes[rank == 0, -1]] = True
    movers = np.flatnonzero(rank > 0)
    mover_rank = collision_index(codes[movers, :-1])  # one mover per prefix and round
    for r in range(int(mover_rank.max()) + 1 if movers.size else 0):
        rows = movers[mover_rank == r]
        choice = np.where(taken[group[rows]], np.inf, distances[rows]).argmin(1)
        taken[group[rows], choice] = True
        codes[rows, -1] = choice
    return codes
