"""Code-usage statistics reported with every quantization (and in the item-code artifact)."""

import numpy as np


def code_usage(codes, codebook_size):
    """Per-level utilization (used codes / ``codebook_size``) and perplexity (exp of usage entropy).

    Perplexity equals the number of codes a level effectively uses: ``codebook_size`` for a uniform
    spread, 1 when every item takes the same code.
    """
    utilization, perplexity = [], []
    for level_codes in np.asarray(codes).T:
        counts = np.bincount(level_codes)
        p = counts[counts > 0] / level_codes.size
        utilization.append(float(p.size / codebook_size))
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())))
    return {"utilization": utilization, "perplexity": perplexity}
