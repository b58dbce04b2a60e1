"""Whether the generative models run under bfloat16 autocast (the `bf16` option).

bf16 autocast pays off only where the hardware has bf16 matrix units: on a CPU with AVX-512 BF16 or AMX a
training step is ~1.6x faster, but on an AVX2-only CPU oneDNN has no bf16 kernels and falls back to a
reference path, and the same step becomes ~25x slower than float32 (measured on all-MiniLM-L6-v2, one thread,
batch 64 x 32 tokens: 60 s vs 2.2 s). `bf16: auto` therefore turns it on only where it is native.
"""

import logging

import torch

logger = logging.getLogger(__name__)


def native_bf16(device):
    """True when `device` computes bf16 matrix products natively (CUDA with bf16, AVX-512 BF16 or AMX CPUs)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_bf16(value, device):
    """The `bf16` option as a bool: 'auto' follows `native_bf16`; True on a device without it logs a warning."""
    if isinstance(value, str) and value.lower() == "auto":
        return native_bf16(device)
    if not isinstance(value, bool):
        raise ValueError(f"bf16: expected true, false or auto, got {value!r}")
    if value and not native_bf16(device):
        logger.warning(
            f"bf16: true on {torch.device(device).type} without native bf16 (no AVX-512 BF16 / AMX): autocast runs "
            "through slow reference kernels there (~25x slower than float32 on AVX2); set bf16: auto or false"
        )
    return value
