"""Semantic-domination diagnostic (recbole_prorec.analysis) on small synthetic embeddings."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recbole_prorec import analysis


def test_nearest_neighbours_exclude_the_item_itself_and_do_not_depend_on_chunking():
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.05]])
    neighbours = analysis.nearest_neighbours(embeddings, k=1)
    assert neighbours.squeeze(1).tolist() == [1, 0, 3, 2, 2]
    random = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(analysis.nearest_neighbours(random, 5, chunk_size=7), analysis.nearest_neighbours(random, 5))


def test_neighbour_overlap_counts_shared_neighbours_regardless_of_order():
    a = torch.tensor([[1, 2, 3], [0, 2, 3]])
    assert analysis.neighbour_overlap(a, a.flip(1)) == 1.0
    assert analysis.neighbour_overlap(a, torch.tensor([[4, 5, 1], [4, 5, 6]])) == pytest.approx(1 / 6)


def test_code_category_agreement_is_perfect_for_category_codes_and_skips_unknown_labels():
    categories = ["lips", "lips", "eyes", None, "eyes"]
    perfect = analysis.code_category_agreement(np.array([3, 3, 1, 0, 1]), categories)
    assert perfect == {"purity": 1.0, "nmi": 1.0}
    mixed = analysis.code_category_agreement(np.array([0, 1, 0, 2, 1]), categories)
    assert mixed["purity"] == 0.5 and mixed["nmi"] == 0.0


def test_naive_concatenation_is_dominated_by_the_larger_semantic_part():
    generator = torch.Generator().manual_seed(0)
    collaborative = 0.02 * torch.randn(300, 16, generator=generator)  # small, like trained ID embeddings
    semantic = torch.nn.functional.normalize(torch.randn(300, 64, generator=generator), dim=1)
    sources = {"collaborative": collaborative, "concat": torch.cat([collaborative, semantic], dim=1)}
    categories = [f"c{i % 5}" for i in range(300)]
    first_codes = {"collaborative": np.arange(300) % 5, "concat": np.arange(300) % 7}
    rows = analysis.domination_table(sources, collaborative, semantic, first_codes, categories, k=10)
    by_source = {row["code_source"]: row for row in rows}
    assert by_source["collaborative"]["overlap_collab"] == 1.0
    assert by_source["concat"]["overlap_semantic"] > 0.9 > 0.2 > by_source["concat"]["overlap_collab"]
    assert by_source["collaborative"]["purity"] == 1.0 and by_source["concat"]["purity"] < 1.0
    assert "overlap_collab@10" in analysis.format_table(rows)


def test_plot_is_a_png(tmp_path):
    rows = [{"code_source": "concat", "overlap_collab": 0.1, "overlap_semantic": 0.9, "purity": 0.5, "nmi": math.nan}]
    path = analysis.plot_table(rows, tmp_path / "plots" / "domination.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["domination.png"]


def test_item_categories_take_the_second_level_of_the_first_path(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "tiny.item").write_text(
        "item_id:token\tcategories:token_seq\na\tBeauty > Makeup > Lips | Beauty > Face\nb\tBeauty\nc\t\n"
    )
    tokens = np.array(["[PAD]", "a", "b", "c"])
    dataset = SimpleNamespace(
        dataset_path=str(tmp_path / "tiny"),
        dataset_name="tiny",
        iid_field="item_id",
        item_num=4,
        field2id_token={"item_id": tokens},
        field2token_id={"item_id": {t: i for i, t in enumerate(tokens)}},
    )
    assert analysis.item_categories(dataset) == [None, "Makeup", "Beauty", None]
