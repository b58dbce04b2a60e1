"""Contracts of recbole_prorec.quantization: k-means, residual levels, collisions, RQ-VAE, determinism."""

import numpy as np
import pytest
import torch

from recbole_prorec.quantization import (
    add_collision_level,
    collision_index,
    collision_rate,
    kmeans,
    quantize,
)
from recbole_prorec.quantization.kmeans import balanced_assign
from recbole_prorec.quantization.product import embedding_slices

TINY_RQVAE = dict(latent_dim=4, hidden_dims=(32, 16), epochs=25, batch_size=64, lr=3e-3, show_progress=False)


def planted_clusters(n_per=40, k=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 20.0 * torch.randn(k, d, generator=g)
    labels = torch.arange(k).repeat_interleave(n_per)
    return centers[labels] + 0.1 * torch.randn(k * n_per, d, generator=g), labels


def random_embeddings(n=300, d=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_kmeans_recovers_planted_clusters():
    x, labels = planted_clusters()
    _, assign = kmeans(x, 5, torch.Generator().manual_seed(0))
    pairs = set(zip(labels.tolist(), assign.tolist()))
    assert len(pairs) == 5 and len(set(assign.tolist())) == 5  # a bijection: equal up to label permutation


def test_kmeans_rejects_more_clusters_than_points():
    with pytest.raises(ValueError, match="k=4, n=3"):
        kmeans(torch.zeros(3, 2), 4, torch.Generator())


def test_residual_error_falls_with_each_level():
    x = random_embeddings()
    errors = quantize(x, levels=4, codebook_size=8).stats["residual_errors"]
    assert len(errors) == 4
    assert errors[0] < float(((x - x.mean(0)) ** 2).mean()) + float((x.mean(0) ** 2).mean())
    assert all(a > b for a, b in zip(errors, errors[1:]))


def test_collision_index_counts_items_sharing_a_prefix_in_row_order():
    prefix = np.array([[0, 0], [0, 0], [1, 0], [0, 0], [1, 1]])
    assert collision_index(prefix).tolist() == [0, 1, 0, 2, 0]
    assert collision_rate(prefix) == pytest.approx(3 / 5)
    assert collision_rate(add_collision_level(prefix)) == 0.0


@pytest.mark.parametrize("method", ["rkmeans", "rqvae", "pq"])
def test_codes_unique_after_collision_handling(method):
    kwargs = TINY_RQVAE if method == "rqvae" else None
    result = quantize(random_embeddings(n=120), method, levels=2, codebook_size=4, rqvae_kwargs=kwargs)
    codes, stats = result.codes, result.stats
    assert codes.dtype == np.int64 and codes.shape == (120, 3)
    assert np.unique(codes, axis=0).shape[0] == 120
    assert stats["collision_rate_before"] > 0 and stats["collision_rate_after"] == 0.0
    assert stats["max_collision_index"] == codes[:, -1].max() > 0
    assert len(stats["utilization"]) == len(stats["perplexity"]) == 2
    for level, perplexity in enumerate(stats["perplexity"]):
        share = np.bincount(codes[:, level]) / len(codes)
        share = share[share > 0]
        assert perplexity == pytest.approx(np.exp(-(share * np.log(share)).sum()))
        assert stats["utilization"][level] == pytest.approx(len(share) / stats["codebook_size"])


def test_embedding_slices_cover_every_coordinate_once_in_near_equal_parts():
    parts = embedding_slices(10, 4)
    assert [p.start for p in parts] == [0] + [p.stop for p in parts[:-1]] and parts[-1].stop == 10
    assert sorted(p.stop - p.start for p in parts) == [2, 2, 3, 3]


def test_each_product_digit_reads_only_its_own_slice():
    x = random_embeddings(n=200, d=8)
    moved = x.copy()
    moved[:, :2] = np.random.default_rng(1).standard_normal((200, 2))  # digit 0's slice of 4 digits
    first = quantize(x, "pq", levels=4, codebook_size=8).codes
    second = quantize(moved, "pq", levels=4, codebook_size=8).codes
    np.testing.assert_array_equal(first[:, 1:4], second[:, 1:4])
    assert not np.array_equal(first[:, 0], second[:, 0])


def test_more_product_digits_reconstruct_better_and_collide_less():
    x = random_embeddings(n=300, d=16)
    stats = [quantize(x, "pq", levels=digits, codebook_size=8).stats for digits in (1, 4, 16)]
    errors = [s["reconstruction_error"] for s in stats]
    assert errors[0] > errors[1] > errors[2]
    assert stats[0]["collision_rate_before"] > stats[1]["collision_rate_before"] >= stats[2]["collision_rate_before"]
    assert stats[2]["collision_rate_before"] == 0.0


def test_balanced_assignment_respects_capacities():
    noise = 0.01 * torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    x = torch.cat([torch.zeros(90, 2), torch.ones(10, 2)]) + noise  # 90 points crowd the first centroid
    centroids = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0], [-5.0, 5.0]])
    assign = balanced_assign(x, centroids, capacity=25)
    assert torch.bincount(assign, minlength=4).max() <= 25 and (assign >= 0).all()
    codes = quantize(random_embeddings(n=103), levels=2, codebook_size=8, balanced=True).codes
    for level in range(2):
        assert np.bincount(codes[:, level]).max() <= -(-103 // 8)


def test_balanced_assignment_rejects_too_small_capacity():
    with pytest.raises(ValueError, match="capacity"):
        balanced_assign(torch.zeros(10, 2), torch.zeros(2, 2), capacity=4)


@pytest.mark.parametrize("method", ["rkmeans", "rqvae", "pq"])
def test_same_seed_same_codes(method):
    x = random_embeddings(n=150)
    kwargs = TINY_RQVAE if method == "rqvae" else None
    first = quantize(x, method, levels=2, codebook_size=8, seed=3, rqvae_kwargs=kwargs)
    second = quantize(torch.from_numpy(x), method, levels=2, codebook_size=8, seed=3, rqvae_kwargs=kwargs)
    np.testing.assert_array_equal(first.codes, second.codes)
    other = quantize(x, method, levels=2, codebook_size=8, seed=4, rqvae_kwargs=kwargs)
    assert not np.array_equal(first.codes, other.codes)


def test_rqvae_loss_decreases_and_reports_errors():
    x, _ = planted_clusters(n_per=25, k=8, d=16)
    stats = quantize(x / 20, "rqvae", levels=2, codebook_size=8, rqvae_kwargs=TINY_RQVAE).stats
    history = stats["loss_history"]
    assert len(history) == TINY_RQVAE["epochs"] and history[-1] < 0.6 * history[0]
    assert stats["reconstruction_error"] > 0 and stats["latent_reconstruction_error"] > 0


def test_fewer_items_than_codes_shrinks_the_codebook():
    result = quantize(random_embeddings(n=6), levels=2, codebook_size=256)
    assert result.stats["codebook_size"] == 6 and np.unique(result.codes, axis=0).shape[0] == 6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="opq"), "unknown quantization method"),
        (dict(method="pq", levels=17), "1 <= digits <= embedding width"),
        (dict(method="pq", balanced=True), "balanced"),
        (dict(levels=0), "levels >= 1"),
        (dict(rqvae_kwargs={"epochs": 1}), "rqvae_kwargs"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize(random_embeddings(n=10), **kwargs)


def test_bad_embeddings_are_rejected():
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        quantize(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.full((5, 2), np.nan, dtype=np.float32))
