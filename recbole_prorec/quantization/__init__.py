"""Item-code quantization: residual k-means (PRORec), RQ-VAE (TIGER), RQ-VAE in a language model's token space
(SemConv), collision handling, the item-code artifact."""

from .artifact import ItemCodeArtifact, artifact_prefix, recorded_digest
from .collisions import add_collision_level, collision_index, collision_rate, resolve_in_last_level
from .kmeans import kmeans, residual_kmeans
from .quantizer import QuantizationResult, quantization_result, quantize
from .rqvae import RQVAE, RQVAEConfig, train_rqvae
from .stats import code_usage

__all__ = [
    "ItemCodeArtifact",
    "QuantizationResult",
    "RQVAE",
    "RQVAEConfig",
    "add_collision_level",
    "artifact_prefix",
    "code_usage",
    "collision_index",
    "collision_rate",
    "kmeans",
    "quantization_result",
    "quantize",
    "recorded_digest",
    "resolve_in_last_level",
    "residual_kmeans",
    "train_rqvae",
]
