"""Item-code quantization: residual k-means (PRORec), RQ-VAE (TIGER), collision levels, the item-code artifact."""

from .artifact import ItemCodeArtifact
from .collisions import add_collision_level, collision_index, collision_rate
from .kmeans import kmeans, residual_kmeans
from .quantizer import QuantizationResult, quantize
from .rqvae import RQVAE, RQVAEConfig, train_rqvae
from .stats import code_usage

__all__ = [
    "ItemCodeArtifact",
    "QuantizationResult",
    "RQVAE",
    "RQVAEConfig",
    "add_collision_level",
    "code_usage",
    "collision_index",
    "collision_rate",
    "kmeans",
    "quantize",
    "residual_kmeans",
    "train_rqvae",
]
