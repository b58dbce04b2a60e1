"""RQ-VAE whose cascaded codebooks are tied to a language model's input token-embedding space (SemConv's tokenizer).

Reference: Guanghan Li et al. "Semantic Convergence: Harmonizing Recommender Systems via Two-Stage Alignment and
Behavioral Semantic Tokenization." AAAI 2025, arXiv:2412.13771 (Alignment Tokenization).

TIGER's RQ-VAE (``rqvae.py``) with three changes: the latent width is the language model's hidden size; every
code vector starts at a distinct row of the model's token-embedding table and is pulled towards its own row during
training (``tie_weight``), so a code can become a new vocabulary token whose embedding already sits among the
model's own; and the code tuple keeps a fixed length (collisions are repaired inside the last level,
``collisions.resolve_in_last_level``, instead of adding a level). With ``tied=False`` it is TIGER's RQ-VAE at that
latent width (k-means initialisation, no tie): the ablation.

The tie is scale-free. Token rows have norm ~1 (MiniLM: 1.09 on average) while the encoder's latents, and the
residuals of later levels, have whatever scale training gives them; a tie in absolute distance (this module's first
version) pinned the codes at norm ~1 while the latents grew, so codes reseeded onto data were snapped back onto
token rows far from it and stayed unused (on Beauty 38-56% of the codes per level were used, and the loss rose over
training). Here level ``l`` has a scale ``s_l``, refitted by least squares at every step, between the token space
and the latent space: code ``k`` of level ``l`` is tied to ``s_l * T[a_{l,k}]``, in latent units (so the tie and
the RQ-VAE's own terms keep their balance whatever the latents' scale), and its token-space vector ``C_l[k] / s_l``
is what the language model receives. Unused codes are reseeded from the data (RQ-VAE's rule: onto the worst
quantized residuals) and keep that place: their token row is re-chosen (the nearest free row), not imposed.
"""

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from .collisions import resolve_in_last_level
from .kmeans import kmeans, nearest, reconstruct, squared_distances
from .quantizer import _as_float_tensor, quantization_result
from .rqvae import RQVAE, RQVAEConfig, train_rqvae


def fitted_scale(vectors, rows):
    """Least-squares ``s > 0`` of ``vectors ~ s * rows`` (both ``[K, d]``, paired row by row)."""
    return ((vectors * rows).sum() / rows.pow(2).sum().clamp_min(1e-12)).clamp_min(1e-8)


def distinct_nearest_rows(vectors, token_embeddings):
    """A distinct token row per vector ``[K, d]`` -> ``[K]`` row indices, greedily: the vector closest to its
    nearest row chooses first, each takes the nearest row no earlier vector took (K <= V)."""
    distances = squared_distances(vectors, token_embeddings)  # [K, V]
    rows = torch.empty(vectors.shape[0], dtype=torch.long)
    taken = torch.zeros(token_embeddings.shape[0], dtype=torch.bool)
    for k in distances.min(1).values.argsort().tolist():
        row = int(distances[k].masked_fill(taken, torch.inf).argmin())
        rows[k], taken[row] = row, True
    return rows


@torch.no_grad()
def fit_to_token_rows(vectors, token_embeddings, scale=None, iterations=3):
    """Scale ``s`` and distinct rows ``a`` with ``vectors [K, d] ~ s * T[a]``, alternating the two fits from
    ``scale`` (None: the ratio of the two sets' root-mean-square norms)."""
    if scale is None:
        scale = vectors.pow(2).sum(1).mean().sqrt() / token_embeddings.pow(2).sum(1).mean().sqrt()
    for _ in range(iterations):
        rows = distinct_nearest_rows(vectors / scale, token_embeddings)
        scale = fitted_scale(vectors, token_embeddings[rows])
    return scale, rows


@torch.no_grad()
def token_tie_stats(codebooks, token_embeddings, scales=None, anchors=None):
    """Per level: the scale between token and latent space, and each code's distance and cosine to its token row.

    ``codebooks [L, K, k]`` in latent units; ``scales [L]`` and ``anchors [L, K]`` of a tied model, or None to fit
    them here (the untied ablation: the same numbers, so tied and untied codebooks compare). Distances are in token
    units (``|C_l[k] / s_l - T[a]|``; a token row has norm ~1); ``token_row_gap`` is the mean distance of those rows
    to their own nearest other row, the scale of "near" in that space.
    """
    if scales is None:
        fitted = [fit_to_token_rows(codebook, token_embeddings) for codebook in codebooks]
        scales = torch.stack([scale for scale, _ in fitted])
        anchors = torch.stack([rows for _, rows in fitted])
    rows = token_embeddings[anchors]  # [L, K, k]
    distance = (codebooks / scales[:, None, None] - rows).norm(dim=-1)  # [L, K]
    cosine = F.cosine_similarity(codebooks, rows, dim=-1)  # [L, K]
    gaps = torch.cat(  # per level, to bound memory: [K, V] distances at a time
        [squared_distances(token_embeddings[a], token_embeddings).topk(2, largest=False).values[:, 1] for a in anchors]
    ).sqrt()
    return {
        "token_scale_per_level": scales.tolist(),
        "token_distance_per_level": distance.mean(1).tolist(),
        "token_cosine_per_level": cosine.mean(1).tolist(),
        "token_row_gap": float(gaps.mean()),
    }


class _RecordsCodeUse:
    """Mixin for an ``RQVAE``: before each reseeding (after every epoch), the fraction of each level's codes that
    the items use, in ``code_use_history`` (what the reseeding then hides: a reseeded code is used by construction)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.code_use_history = []

    @torch.no_grad()
    def reseed_unused_codes(self, x):
        codes, _, _ = self.quantize(self.encoder(x))
        size = self.codebooks.shape[1]
        self.code_use_history.append([len(level.unique()) / size for level in codes.T])
        return super().reseed_unused_codes(x)


class _UntiedRQVAE(_RecordsCodeUse, RQVAE):
    """TIGER's RQ-VAE (the ablation without the tie), recording its code use."""


class TokenTiedRQVAE(_RecordsCodeUse, RQVAE):
    """RQ-VAE with each code tied to a distinct row of ``token_embeddings [V, k]`` of its level, up to a scale.

    Loss = RQ-VAE's loss + ``tie_weight * mean_{l,k} |C_l[k] - s_l T[a_{l,k}]|^2`` with ``s_l`` the least-squares
    scale of level ``l`` (refitted at every step, no gradient) and ``a_{l,k}`` code ``k``'s row: distinct within a
    level, re-chosen after every epoch as the nearest free row to ``C_l[k] / s_l`` (after unused codes are moved
    onto data). ``token_codebooks()``: the code vectors in token units, ``C_l[k] / s_l``.
    """

    def __init__(self, input_dim, levels, codebook_size, token_embeddings, hidden_dims, beta, tie_weight):
        super().__init__(input_dim, levels, codebook_size, token_embeddings.shape[1], hidden_dims, beta)
        if codebook_size > token_embeddings.shape[0]:
            raise ValueError(
                f"codebook_size {codebook_size} > {token_embeddings.shape[0]} token embeddings to tie codes to"
            )
        self.tie_weight = tie_weight
        self.register_buffer("token_embeddings", token_embeddings.float(), persistent=False)  # [V, k]
        self.register_buffer("anchors", torch.zeros(levels, codebook_size, dtype=torch.long), persistent=False)
        self.register_buffer("scales", torch.ones(levels), persistent=False)  # [L]: latent units per token unit

    @torch.no_grad()
    def init_codebooks(self, x, seed=0, n_iter=50, balanced=False):
        """Level by level: k-means of the encoded residuals picks distinct token rows (``fit_to_token_rows``) and
        the level's scale; the codes start exactly at those rows, times the scale."""
        generator = torch.Generator().manual_seed(seed)
        residual = self.encoder(x)
        for level, codebook in enumerate(self.codebooks):
            centroids, _ = kmeans(residual, codebook.shape[0], generator, n_iter=n_iter, balanced=balanced)
            self.scales[level], self.anchors[level] = fit_to_token_rows(centroids, self.token_embeddings)
            codebook.copy_(self.scales[level] * self.token_embeddings[self.anchors[level]])
            residual = residual - codebook[nearest(residual, codebook)[0]]

    def tie_loss(self):
        """Mean squared distance (latent units) of every code vector to its token row times its level's scale."""
        rows = self.token_embeddings[self.anchors]  # [L, K, k]
        with torch.no_grad():
            scales = torch.stack([fitted_scale(c, r) for c, r in zip(self.codebooks, rows)])
            self.scales.copy_(scales)
        return (self.codebooks - scales[:, None, None] * rows).pow(2).sum(-1).mean()

    def forward(self, x):
        codes, reconstruction_loss, rq_loss = super().forward(x)
        return codes, reconstruction_loss, rq_loss + self.tie_weight * self.tie_loss()

    @torch.no_grad()
    def reseed_unused_codes(self, x):
        """RQ-VAE's reseeding from data (unused codes move onto the worst quantized residuals, and stay there),
        then every level's scale and rows are refitted to where its codes now are."""
        moved = super().reseed_unused_codes(x)
        for level, codebook in enumerate(self.codebooks):
            self.scales[level], self.anchors[level] = fit_to_token_rows(
                codebook, self.token_embeddings, self.scales[level], iterations=1
            )
        return moved

    @torch.no_grad()
    def token_codebooks(self):
        """The code vectors in token units, ``C_l[k] / s_l`` ``[L, K, k]``: the language model's new token rows."""
        return self.codebooks / self.scales[:, None, None]


def quantize_in_token_space(
    embeddings, token_embeddings, levels, codebook_size, seed=0, tied=True, tie_weight=100.0, rqvae_kwargs=None
):
    """Unique ``levels``-code tuples of ``embeddings [n, d]`` from cascaded codebooks of width ``token_embeddings``'s.

    The embeddings are standardised per dimension first. Returns ``(QuantizationResult, codebooks [levels,
    codebook_size, k])``: the codes (no extra level; collisions repaired in the last level) with their statistics
    (per-level utilisation and perplexity, also before the last epoch's reseeding, ``utilization_last_epoch``;
    reconstruction errors; the loss of the first and last epoch; the codes' scale, distance and cosine to their token
    rows, ``token_tie_stats``, for the untied ablation too), and the code vectors a language model can
    take as the embeddings of its new item tokens (tied: in token units, ``TokenTiedRQVAE.token_codebooks``;
    untied: the latent code vectors as they are). ``rqvae_kwargs``: ``RQVAEConfig`` fields except ``latent_dim``
    (the token width). Deterministic given ``seed``.
    """
    options = dict(rqvae_kwargs or {})
    if "latent_dim" in options:
        raise ValueError(
            f"rqvae_kwargs.latent_dim ({options['latent_dim']}) cannot be set here: the codebooks' width is the "
            f"language model's token-embedding width ({token_embeddings.shape[1]})"
        )
    config = dataclasses.replace(RQVAEConfig(**options), latent_dim=int(token_embeddings.shape[1]))
    start = time.perf_counter()
    x = _as_float_tensor(embeddings)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-8)  # standardised per dimension: codes do not hinge on E_C's scale
    token_embeddings = token_embeddings.detach().float()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if tied:
            model = TokenTiedRQVAE(
                x.shape[1], levels, codebook_size, token_embeddings, config.hidden_dims, config.beta, tie_weight
            )
        else:
            model = _UntiedRQVAE(
                x.shape[1], levels, codebook_size, config.latent_dim, tuple(config.hidden_dims), config.beta
            )
    model.init_codebooks(x, seed, config.kmeans_iters)
    model, history = train_rqvae(x, levels, codebook_size, seed, config=config, model=model)
    prefix, errors = model.encode(x)
    errors["loss_history"] = history
    errors["loss_first_epoch"], errors["loss_last_epoch"] = (history[0], history[-1]) if history else (None, None)
    errors["utilization_last_epoch"] = model.code_use_history[-1] if model.code_use_history else None
    with torch.no_grad():
        latent = model.encoder(x)
        residual = latent - reconstruct(prefix[:, :-1], model.codebooks[:-1])[-1] if levels > 1 else latent
        distances = squared_distances(residual, model.codebooks[-1])  # [n, K]
    prefix = prefix.numpy().astype(np.int64)
    codes = resolve_in_last_level(prefix, distances.numpy())
    settings = {"levels": levels, "seed": seed, "tied": tied, "tie_weight": tie_weight if tied else 0.0}
    codebooks = model.codebooks.detach()
    if tied:
        settings.update(token_tie_stats(codebooks, token_embeddings, model.scales, model.anchors))
        codebooks = model.token_codebooks()
    else:
        settings.update(token_tie_stats(codebooks, token_embeddings))
    result = quantization_result("token-rqvae", prefix, codes, codebook_size, errors, start, **settings)
    return result, codebooks.clone()
