"""Product quantization: many short digits per item, one independent k-means per slice of the embedding.

Reference: Hervé Jégou et al. "Product Quantization for Nearest Neighbor Search." IEEE TPAMI 2011; used for
item codes by Yupeng Hou et al. "Generating Long Semantic IDs in Parallel for Recommendation." KDD 2025 (RPG).

Why: with 3-4 hierarchical codes thousands of items share each code, and a generator that scores an item by
the sum of its code vectors cannot tell them apart. Cutting a d-dimensional embedding into M slices of d/M
coordinates and clustering each slice gives M digits whose combination is nearly unique per item (so nearly
every item gets its own output vector), while items close in embedding space still share most digits.
"""

import torch

from .kmeans import kmeans


def standardize(x):
    """Zero mean, unit variance per coordinate, so that no slice is dominated by a few wide coordinates."""
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-8)


def embedding_slices(dim, digits):
    """`digits` contiguous, near-equal coordinate ranges covering `range(dim)` (the first ones 1 wider)."""
    if not 1 <= digits <= dim:
        raise ValueError(f"product quantization needs 1 <= digits <= embedding width, got {digits} digits for {dim}")
    bounds = torch.linspace(0, dim, digits + 1).round().long().tolist()
    return [slice(bounds[m], bounds[m + 1]) for m in range(digits)]


def product_quantize(x, digits, k, seed=0, n_iter=50):
    """Quantize `x [n, d]` (standardised first) into `digits` codes of `k` centroids each.

    Returns `(codes [n, digits] long, reconstruction error)`, the error a mean squared error per coordinate in the
    standardised space. `k` is lowered to `n` when there are fewer points than codes.
    """
    x = standardize(x.float())
    k = min(k, x.shape[0])
    generator = torch.Generator().manual_seed(seed)
    codes, reconstruction = [], torch.empty_like(x)
    for part in embedding_slices(x.shape[1], digits):
        centroids, assign = kmeans(x[:, part].contiguous(), k, generator, n_iter=n_iter)
        codes.append(assign)
        reconstruction[:, part] = centroids[assign]
    return torch.stack(codes, 1), torch.nn.functional.mse_loss(reconstruction, x).item()
