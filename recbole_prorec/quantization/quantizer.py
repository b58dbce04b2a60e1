"""``quantize``: one front door from item embeddings to unique item code tuples plus their statistics."""

import dataclasses
import logging
import time

import numpy as np
import torch

from .collisions import add_collision_level, collision_index, collision_rate
from .kmeans import reconstruct, residual_kmeans
from .product import product_quantize
from .rqvae import RQVAEConfig, train_rqvae
from .stats import code_usage

logger = logging.getLogger(__name__)

METHODS = ("rkmeans", "rqvae", "pq")


@dataclasses.dataclass
class QuantizationResult:
    """``codes`` int64 ``[n, levels + 1]`` (last column: collision level), ``stats`` a JSON-ready dict."""

    codes: np.ndarray
    stats: dict


def _as_float_tensor(embeddings):
    x = embeddings.detach().cpu() if torch.is_tensor(embeddings) else torch.from_numpy(np.asarray(embeddings))
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty [n, d] array, got shape {tuple(x.shape)}")
    x = x.float().contiguous()
    if not torch.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return x


def quantize(embeddings, method="rkmeans", levels=3, codebook_size=256, seed=0, balanced=False, rqvae_kwargs=None):
    """Quantize ``embeddings [n, d]`` (numpy or torch) into ``levels`` codes per item plus a collision level.

    ``method``: ``"rkmeans"`` (residual k-means, PRORec), ``"rqvae"`` (TIGER; ``rqvae_kwargs`` are
    ``RQVAEConfig`` fields) or ``"pq"`` (product quantization: ``levels`` digits, one per slice of the
    standardised embedding, RPG's long codes; its error is in the standardised space). ``balanced`` caps every
    k-means cluster at ``ceil(n / K)`` items (for RQ-VAE: in the codebook initialisation; not for ``pq``).
    Deterministic given ``seed``. Reconstruction errors are mean squared errors per coordinate, in input space
    (and, for RQ-VAE, in the latent space too); ``residual_errors[l]`` is the error after levels ``<= l`` (input
    space for k-means, latent for RQ-VAE).
    """
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; expected one of {METHODS}")
    if levels < 1 or codebook_size < 2:
        raise ValueError(f"need levels >= 1 and codebook_size >= 2, got levels={levels}, codebook_size={codebook_size}")
    if rqvae_kwargs and method != "rqvae":
        raise ValueError(f"rqvae_kwargs given for method {method!r}; they apply to method='rqvae' only")
    start = time.perf_counter()
    x = _as_float_tensor(embeddings)
    if method == "rkmeans":
        codes, codebooks = residual_kmeans(x, levels, codebook_size, seed=seed, balanced=balanced)
        partial = reconstruct(codes, codebooks)  # [L, n, d]
        residual_errors = [torch.nn.functional.mse_loss(p, x).item() for p in partial]
        errors = {"reconstruction_error": residual_errors[-1], "residual_errors": residual_errors}
        used_size = codebooks.shape[1]
    elif method == "pq":
        if balanced:
            raise ValueError("balanced k-means applies to method 'rkmeans' and 'rqvae' only, not 'pq'")
        codes, error = product_quantize(x, levels, codebook_size, seed=seed)
        errors = {"reconstruction_error": error}
        used_size = min(codebook_size, x.shape[0])
    else:
        model, history = train_rqvae(x, levels, codebook_size, seed, balanced, RQVAEConfig(**(rqvae_kwargs or {})))
        codes, errors = model.encode(x)
        errors["loss_history"] = history
        used_size = model.codebooks.shape[1]
    prefix = codes.numpy().astype(np.int64)
    item_codes = add_collision_level(prefix)
    settings = {"levels": levels, "seed": seed, "balanced": balanced}
    return quantization_result(method, prefix, item_codes, used_size, errors, start, **settings)


def quantization_result(method, prefix_codes, item_codes, codebook_size, errors, start, **settings):
    """``QuantizationResult`` of unique ``item_codes [n, L']`` with the statistics every quantizer reports, logged.

    ``prefix_codes [n, L]`` are the quantizer's own codes before collisions were resolved, ``errors`` its
    reconstruction errors (with ``reconstruction_error``), ``start`` its ``time.perf_counter()`` at the start,
    ``settings`` the options recorded with the statistics (levels, seed, ...).
    """
    stats = {
        "method": method,
        "num_items": int(item_codes.shape[0]),
        **settings,
        "codebook_size": int(codebook_size),
        "collision_rate_before": collision_rate(prefix_codes),
        "collision_rate_after": collision_rate(item_codes),
        "max_collision_index": int(collision_index(prefix_codes).max()),  # rank among the items sharing their codes
        **code_usage(prefix_codes, codebook_size),
        **errors,
        "seconds": time.perf_counter() - start,
    }
    logger.info(
        "%s codes in %.1f s: collision rate %.4f -> %.4f, utilization %s, reconstruction MSE %.5f",
        method,
        stats["seconds"],
        stats["collision_rate_before"],
        stats["collision_rate_after"],
        [round(u, 3) for u in stats["utilization"]],
        stats["reconstruction_error"],
    )
    return QuantizationResult(item_codes, stats)
