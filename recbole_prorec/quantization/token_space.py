"""RQ-VAE whose cascaded codebooks live in a language model's input token-embedding space (SemConv's tokenizer).

Reference: Guanghan Li et al. "Semantic Convergence: Harmonizing Recommender Systems via Two-Stage Alignment and
Behavioral Semantic Tokenization." AAAI 2025, arXiv:2412.13771 (Alignment Tokenization).

TIGER's RQ-VAE (``rqvae.py``) with three changes: the latent width is the language model's hidden size; every
code vector starts at a distinct row of the model's token-embedding table and is pulled back towards the
nearest row during training (``tie_weight``), so a code can become a new vocabulary token whose embedding already
sits among the model's own; and the code tuple keeps a fixed length (collisions are repaired inside the last
level, ``collisions.resolve_in_last_level``, instead of adding a level). With ``tied=False`` it is TIGER's
RQ-VAE at that latent width (k-means initialisation, no tie): the ablation.
"""

import dataclasses
import time

import numpy as np
import torch

from .collisions import resolve_in_last_level
from .kmeans import nearest, reconstruct, squared_distances
from .quantizer import _as_float_tensor, quantization_result
from .rqvae import RQVAE, RQVAEConfig, train_rqvae


class TokenTiedRQVAE(RQVAE):
    """RQ-VAE with codebooks initialised from, and regularised towards, rows of ``token_embeddings [V, k]``.

    Loss = RQ-VAE's loss + ``tie_weight * mean_{l,k} |C_l[k] - T[a_{l,k}]|^2`` where ``a_{l,k}`` is the token
    row nearest to code vector ``C_l[k]`` (recomputed after every epoch, when unused codes are also moved).
    """

    def __init__(self, input_dim, levels, codebook_size, token_embeddings, hidden_dims, beta, tie_weight, seed):
        super().__init__(input_dim, levels, codebook_size, token_embeddings.shape[1], hidden_dims, beta)
        if codebook_size > token_embeddings.shape[0]:
            raise ValueError(
                f"codebook_size {codebook_size} > {token_embeddings.shape[0]} token embeddings to start codes from"
            )
        self.tie_weight = tie_weight
        self.register_buffer("token_embeddings", token_embeddings.float(), persistent=False)  # [V, k]
        generator = torch.Generator().manual_seed(seed)
        anchors = torch.stack(
            [torch.randperm(token_embeddings.shape[0], generator=generator)[:codebook_size] for _ in range(levels)]
        )  # [L, K] distinct rows per level
        self.register_buffer("anchors", anchors, persistent=False)
        with torch.no_grad():
            self.codebooks.copy_(self.token_embeddings[anchors])

    def tie_loss(self):
        """Mean squared distance of every code vector to its anchor token row."""
        return (self.codebooks - self.token_embeddings[self.anchors]).pow(2).sum(-1).mean()

    def forward(self, x):
        codes, reconstruction_loss, rq_loss = super().forward(x)
        return codes, reconstruction_loss, rq_loss + self.tie_weight * self.tie_loss()

    @torch.no_grad()
    def reseed_unused_codes(self, x):
        """RQ-VAE's reseeding, each moved code then snapped onto the token row nearest to where it landed (so a
        reseed never leaves the token space); every code's anchor becomes its nearest token row."""
        before = self.codebooks.clone()
        moved = super().reseed_unused_codes(x)
        for level, codebook in enumerate(self.codebooks):
            self.anchors[level] = nearest(codebook, self.token_embeddings)[0]
            changed = (codebook != before[level]).any(-1)
            codebook[changed] = self.token_embeddings[self.anchors[level, changed]]
        return moved


def quantize_in_token_space(
    embeddings, token_embeddings, levels, codebook_size, seed=0, tied=True, tie_weight=10.0, rqvae_kwargs=None
):
    """Unique ``levels``-code tuples of ``embeddings [n, d]`` from cascaded codebooks of width ``token_embeddings``'s.

    The embeddings are standardised per dimension first. Returns ``(QuantizationResult, codebooks [levels,
    codebook_size, k])``: the codes (no extra level; collisions
    repaired in the last level) with their statistics, and the trained code vectors, which a language model can
    take as the embeddings of its new item tokens. ``rqvae_kwargs``: ``RQVAEConfig`` fields except ``latent_dim``
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
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if tied:
            model = TokenTiedRQVAE(
                x.shape[1], levels, codebook_size, token_embeddings, config.hidden_dims, config.beta, tie_weight, seed
            )
        else:
            model = RQVAE(x.shape[1], levels, codebook_size, config.latent_dim, tuple(config.hidden_dims), config.beta)
    if not tied:
        model.init_codebooks(x, seed, config.kmeans_iters)
    model, history = train_rqvae(x, levels, codebook_size, seed, config=config, model=model)
    prefix, errors = model.encode(x)
    errors["loss_history"] = history
    with torch.no_grad():
        latent = model.encoder(x)
        residual = latent - reconstruct(prefix[:, :-1], model.codebooks[:-1])[-1] if levels > 1 else latent
        distances = squared_distances(residual, model.codebooks[-1])  # [n, K]
    prefix = prefix.numpy().astype(np.int64)
    codes = resolve_in_last_level(prefix, distances.numpy())
    settings = {"levels": levels, "seed": seed, "tied": tied, "tie_weight": tie_weight if tied else 0.0}
    if tied:
        token_distance = (model.codebooks - model.token_embeddings[model.anchors]).pow(2).sum(-1).sqrt()  # [L, K]
        settings["token_distance_per_level"] = token_distance.mean(1).tolist()
    result = quantization_result("token-rqvae", prefix, codes, codebook_size, errors, start, **settings)
    return result, model.codebooks.detach().clone()
