"""Residual (hierarchical) k-means: the item-code quantizer of PRORec.

Reference: Xiao et al., "Progressive Collaborative and Semantic Knowledge Fusion for Generative
Recommendation" (PRORec, later UNGER), arXiv:2502.06269. Level ``l`` clusters the residual left by
levels ``< l``, so an item's code tuple is a coarse-to-fine path and the sum of its centroids
approximates its embedding. The same routines initialise the RQ-VAE codebooks (see ``rqvae.py``).

Everything runs in vectorized torch on CPU and is deterministic given the seed (k-means++ draws from a
seeded ``torch.Generator``; ties break towards the lower index).
"""

import logging

import torch

logger = logging.getLogger(__name__)

_CHUNK_ELEMENTS = 1 << 24  # distance-matrix entries per chunk (64 MiB in float32)


def squared_distances(x, centroids):
    """Squared Euclidean distances ``[n, k]`` via ``|x|^2 - 2 x.c + |c|^2`` (clamped at 0)."""
    x_sq = x.pow(2).sum(1, keepdim=True)  # [n, 1]
    c_sq = centroids.pow(2).sum(1)  # [k]
    return (x_sq - 2.0 * x @ centroids.T + c_sq).clamp_min_(0.0)  # [n, k]


def nearest(x, centroids):
    """Index of and squared distance to the nearest centroid, computed in row chunks to bound memory."""
    chunk = max(1, _CHUNK_ELEMENTS // max(1, centroids.shape[0]))
    dists, idx = [], []
    for start in range(0, x.shape[0], chunk):
        d, i = squared_distances(x[start : start + chunk], centroids).min(1)
        dists.append(d)
        idx.append(i)
    return torch.cat(idx), torch.cat(dists)  # [n], [n]


def kmeans_plus_plus(x, k, generator):
    """k-means++ seeding: each new centroid is drawn with probability proportional to D(x)^2.

    When every point already coincides with a centroid (duplicate data) the draw falls back to uniform.
    """
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator)
    centroids = x.new_empty(k, x.shape[1])
    centroids[0] = x[first]
    min_dist = squared_distances(x, centroids[:1]).squeeze(1)  # [n]
    for j in range(1, k):
        weights = min_dist if min_dist.sum() > 0 else torch.ones_like(min_dist)
        pick = torch.multinomial(weights, 1, generator=generator)
        centroids[j] = x[pick]
        min_dist = torch.minimum(min_dist, squared_distances(x, centroids[j : j + 1]).squeeze(1))
    return centroids  # [k, d]


def reseed_empty(centroids, counts, x, dist):
    """In place: centroids that own no point move onto the points farthest from their own centroid."""
    empty = torch.nonzero(counts == 0).squeeze(1)
    if empty.numel() > 0:
        centroids[empty] = x[torch.topk(dist, empty.numel()).indices]


def balanced_assign(x, centroids, capacity):
    """Assign every point to a centroid so that no centroid receives more than ``capacity`` points.

    Capacity-constrained greedy in rounds: each unassigned point proposes to its nearest centroid that still
    has room; a centroid accepts the closest proposers up to its remaining room and rejects the rest; accepted
    assignments are final. Every round either assigns all remaining points or fills at least one centroid, so
    it ends after at most ``k + 1`` rounds. Requires ``capacity * k >= n``. Uses the full ``[n, k]`` matrix.
    """
    n, k = x.shape[0], centroids.shape[0]
    if capacity * k < n:
        raise ValueError(f"balanced assignment needs capacity * k >= n, got {capacity} * {k} < {n}")
    dist = squared_distances(x, centroids)  # [n, k]
    assign = torch.full((n,), -1, dtype=torch.long)
    room = torch.full((k,), capacity, dtype=torch.long)
    pending = torch.arange(n)
    while pending.numel() > 0:
        d = dist[pending].masked_fill(room.eq(0).unsqueeze(0), float("inf"))  # [p, k]
        d_best, choice = d.min(1)  # [p]
        # sort proposals by (centroid, distance) and rank them inside each centroid's group
        order = torch.argsort(d_best, stable=True)
        order = order[torch.argsort(choice[order], stable=True)]
        sorted_choice = choice[order]
        group_start = torch.searchsorted(sorted_choice, sorted_choice, side="left")
        rank = torch.arange(order.numel()) - group_start
        accepted = order[rank < room[sorted_choice]]
        assign[pending[accepted]] = choice[accepted]
        room -= torch.bincount(choice[accepted], minlength=k)
        keep = torch.ones(pending.numel(), dtype=torch.bool)
        keep[accepted] = False
        pending = pending[keep]
    return assign  # [n]


def kmeans(x, k, generator, n_iter=50, balanced=False):
    """Lloyd's k-means from k-means++ seeds; returns ``(centroids [k, d], assignment [n])``.

    Empty clusters are re-seeded with the points farthest from their centroid. With ``balanced`` every
    assignment step is capacity-constrained to ``ceil(n / k)`` points per cluster (``balanced_assign``).
    Stops early when the assignment no longer changes.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n points, got k={k}, n={n}")
    capacity = -(-n // k)
    centroids = kmeans_plus_plus(x, k, generator)
    assign = None
    for step in range(n_iter + 1):  # the last pass only assigns, so codes always match the centroids
        if balanced:
            new_assign = balanced_assign(x, centroids, capacity)
            dist = (x - centroids[new_assign]).pow(2).sum(1)
        else:
            new_assign, dist = nearest(x, centroids)
        if step == n_iter or (assign is not None and torch.equal(new_assign, assign)):
            return centroids, new_assign
        assign = new_assign
        counts = torch.bincount(assign, minlength=k)  # [k]
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)  # [k, d]
        centroids = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp_min(1).unsqueeze(1), centroids)
        reseed_empty(centroids, counts, x, dist)


def residual_kmeans(x, levels, k, seed=0, n_iter=50, balanced=False):
    """Quantize ``x [n, d]`` with ``levels`` rounds of k-means on residuals.

    Returns ``(codes [n, levels] long, codebooks [levels, k, d])``; ``k`` is lowered to ``n`` (with a warning)
    when there are fewer points than codes.
    """
    x = x.float()
    if k > x.shape[0]:
        logger.warning("codebook size %d > %d points: using %d codes per level", k, x.shape[0], x.shape[0])
        k = x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    residual = x.clone()
    codes, codebooks = [], []
    for _ in range(levels):
        centroids, assign = kmeans(residual, k, generator, n_iter=n_iter, balanced=balanced)
        codes.append(assign)
        codebooks.append(centroids)
        residual = residual - centroids[assign]
    return torch.stack(codes, 1), torch.stack(codebooks)


def reconstruct(codes, codebooks):
    """Cumulative reconstructions ``[levels, n, d]``: entry ``l`` is the sum of the centroids of levels <= l."""
    levels = torch.arange(codebooks.shape[0])
    return codebooks[levels, codes].transpose(0, 1).cumsum(0)  # codebooks[l, codes[:, l]] -> [n, L, d]
