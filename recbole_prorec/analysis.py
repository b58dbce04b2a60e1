"""Semantic-domination diagnostic for stage-1 item embeddings and their codes.

PRORec (Xiao et al., arXiv:2502.06269) observes that quantizing naively concatenated semantic and
collaborative embeddings yields codes governed by the semantic side ("semantic domination"). This module
measures it per ``code_source``:

- ``overlap_collab@k`` / ``overlap_semantic@k``: the mean fraction of an item's k nearest neighbours
  (cosine) in the embedding that is quantized which are also among its k nearest neighbours in the pure
  collaborative space E_C / the pure semantic space E_S. Domination shows as a high semantic and a low
  collaborative overlap.
- ``purity`` / ``nmi``: agreement of the first code level with the items' category (by default the second
  level of the first category path, as the first is the store name shared by all items): purity = share
  of items in their first-level code's majority category; NMI = normalized mutual information. Both are
  computed over the items that have a category; compare them across code sources at the same codebook size.

    python -m recbole_prorec.analysis --checkpoint saved/PRORecTokenizer-X.pth [--output_dir DIR] [--k 10]
"""

import argparse
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import normalized_mutual_info_score

from recbole_prorec.model.tokenizer import CODE_SOURCES
from recbole_prorec.quantization import quantize
from recbole_prorec.semantic import read_item_fields
from recbole_prorec.tokenize import load_tokenizer
from recbole_prorec.utils import write_atomically

logger = logging.getLogger(__name__)

COLUMNS = ("code_source", "overlap_collab", "overlap_semantic", "purity", "nmi")


def nearest_neighbours(embeddings, k=10, chunk_size=2048):
    """Indices ``[n, k]`` of each row's k most cosine-similar other rows (chunked ``[chunk, n]`` matmuls)."""
    x = F.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=1)  # [n, d]
    n = x.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} items, got {k}")
    neighbours = []
    for start in range(0, n, chunk_size):
        similarity = x[start : start + chunk_size] @ x.T  # [c, n]
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = -float("inf")  # an item is not its own neighbour
        neighbours.append(similarity.topk(k, dim=1).indices)
    return torch.cat(neighbours)  # [n, k]


def neighbour_overlap(neighbours_a, neighbours_b):
    """Mean over items of |N_a(i) ∩ N_b(i)| / k for two ``[n, k]`` neighbour lists."""
    shared = (neighbours_a[:, :, None] == neighbours_b[:, None, :]).any(-1)  # [n, k]
    return shared.float().mean().item()


def item_categories(dataset, field="categories", level=1):
    """Category label per internal id (``None`` where unknown): level ``level`` of the item's first path.

    Paths are "A > B > C", several joined by " | "; a path shorter than ``level + 1`` gives its last level.
    """
    values = read_item_fields(dataset, [field])[field]
    labels = []
    for value in values:
        path = [part.strip() for part in value.split("|")[0].split(">") if part.strip()]
        labels.append(path[min(level, len(path) - 1)] if path else None)
    return labels


def code_category_agreement(first_codes, categories):
    """``{"purity", "nmi"}`` of the first-level codes ``[n]`` against category labels (None = skipped)."""
    known = np.array([label is not None for label in categories])
    if not known.any():
        return {"purity": float("nan"), "nmi": float("nan")}
    codes = np.asarray(first_codes)[known]
    _, labels = np.unique(np.asarray(categories, dtype=object)[known].astype(str), return_inverse=True)
    counts = np.zeros((codes.max() + 1, labels.max() + 1), dtype=np.int64)  # [codes, categories]
    np.add.at(counts, (codes, labels), 1)
    return {
        "purity": float(counts.max(1).sum() / codes.size),
        "nmi": float(normalized_mutual_info_score(labels, codes)),
    }


def domination_table(code_embeddings, collaborative, semantic, first_codes=None, categories=None, k=10):
    """One row per code source (see the module docstring); inputs exclude the padding row.

    ``code_embeddings``: ``{code_source: [n, d]}``; ``first_codes``: ``{code_source: [n]}`` first-level codes;
    ``categories``: labels ``[n]`` (None = unknown). Without codes or categories, purity and nmi are NaN.
    """
    collab_neighbours = nearest_neighbours(collaborative, k)
    semantic_neighbours = nearest_neighbours(semantic, k)
    rows = []
    for source, embeddings in code_embeddings.items():
        neighbours = nearest_neighbours(embeddings, k)
        row = {
            "code_source": source,
            "overlap_collab": neighbour_overlap(neighbours, collab_neighbours),
            "overlap_semantic": neighbour_overlap(neighbours, semantic_neighbours),
            "purity": float("nan"),
            "nmi": float("nan"),
        }
        if first_codes is not None and categories is not None:
            row.update(code_category_agreement(first_codes[source], categories))
        rows.append(row)
    return rows


def format_table(rows, k=10):
    header = (
        f"{'code_source':<14}{'overlap_collab@' + str(k):>20}{'overlap_semantic@' + str(k):>22}{'purity':>9}{'nmi':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['code_source']:<14}{row['overlap_collab']:>20.3f}{row['overlap_semantic']:>22.3f}"
            f"{row['purity']:>9.3f}{row['nmi']:>9.3f}"
        )
    return "\n".join(lines)


def plot_table(rows, path, k=10):
    """Grouped bars per code source: neighbour overlaps (left), code/category agreement (right); PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = [row["code_source"] for row in rows]
    x = np.arange(len(sources))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metrics, title in (
        (axes[0], ("overlap_collab", "overlap_semantic"), f"top-{k} neighbour overlap"),
        (axes[1], ("purity", "nmi"), "first-level code vs category"),
    ):
        for offset, metric in zip((-0.2, 0.2), metrics):
            ax.bar(x + offset, [row[metric] for row in rows], width=0.4, label=metric)
        ax.set_xticks(x, sources)
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return write_atomically(path, buffer.getvalue())


def first_level_codes(model, embeddings):
    """`[n]` codes of one k-means level over `embeddings [n, d]`, with the model's quantizer options."""
    options = model.artifact_config
    return quantize(
        embeddings, "rkmeans", 1, options["codebook_size"], seed=options["seed"], balanced=options["balanced"]
    ).codes[:, 0]


def analyze(
    model, dataset, code_sources=CODE_SOURCES, k=10, output_dir=None, category_field="categories", category_level=1
):
    """Cluster each code source into the model's first-level codes and tabulate the diagnostic.

    The first-level code is one k-means over the whole embedding (residual k-means' first level, with the model's
    codebook size, seed and balance) whatever the model's quantizer: a product quantizer's first digit sees only a
    slice of the embedding, so it says nothing about which modality the codes follow.
    ``model`` is a trained PRORecTokenizer. Prints the table; with ``output_dir`` also writes
    ``domination.json`` and ``domination.png`` there. Returns the rows.
    """
    embeddings = {source: model.code_embeddings(source)[1:] for source in code_sources}  # [n, d'] each
    first_codes = {}
    for source, source_embeddings in embeddings.items():
        first_codes[source] = first_level_codes(model, source_embeddings)
    try:
        categories = item_categories(dataset, category_field, category_level)[1:]
    except ValueError as error:  # no category column in this dataset's .item file
        logger.info("no code/category agreement: %s", error)
        categories = None
    rows = domination_table(
        embeddings,
        model.code_embeddings("collaborative")[1:],
        model.code_embeddings("semantic")[1:],
        first_codes,
        categories,
        k,
    )
    print(format_table(rows, k))
    if output_dir is not None:
        output_dir = Path(output_dir)
        write_atomically(output_dir / "domination.json", json.dumps({"k": k, "rows": rows}, indent=1))
        logger.info("wrote %s", plot_table(rows, output_dir / "domination.png", k))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description="Semantic-domination diagnostic of a PRORecTokenizer checkpoint")
    parser.add_argument("--checkpoint", required=True, help="RecBole checkpoint (.pth) of PRORecTokenizer")
    parser.add_argument("--output_dir", default=None, help="folder for domination.json and domination.png")
    parser.add_argument("--k", type=int, default=10, help="neighbours per item")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model, dataset = load_tokenizer(args.checkpoint)
    output_dir = args.output_dir or Path(args.checkpoint).with_suffix("").as_posix() + "-analysis"
    return analyze(model, dataset, k=args.k, output_dir=output_dir)


if __name__ == "__main__":
    main()
