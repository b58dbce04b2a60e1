"""CodeIndex and constrained beam search: only catalogue tuples come out, and a full beam is exact."""

import itertools

import pytest
import torch

from recbole_prorec.model.beam_search import CodeIndex, constrained_beam_search

# Row 0 is the padding item; 9 items over codebooks of sizes 3, 3, 2 (prefix (1,) has one child, (2, 2) too).
CODES = torch.tensor(
    [[-1, -1, -1], [0, 0, 0], [0, 0, 1], [0, 2, 0], [1, 1, 0], [2, 0, 0], [2, 0, 1], [2, 2, 1], [0, 1, 1], [2, 1, 0]]
)


def random_step(codebook_sizes, seed):
    """A fixed random log-probability table per (prefix, code), independent of the beam layout."""
    tables = {}
    generator = torch.Generator().manual_seed(seed)
    for level, size in enumerate(codebook_sizes):
        for prefix in itertools.product(*(range(s) for s in codebook_sizes[:level])):
            tables[prefix] = torch.randn(size, generator=generator).log_softmax(0)

    def step_log_probs(prefix, parent):  # [B, W, t] -> [B, W, K_t]
        rows = [tables[tuple(p)] for p in prefix.flatten(0, 1).tolist()]
        return torch.stack(rows).view(*prefix.shape[:2], -1)

    def score(codes):
        return sum(tables[tuple(codes[:level])][code] for level, code in enumerate(codes)).item()

    return step_log_probs, score


def test_code_index_knows_which_codes_continue_a_prefix():
    index = CodeIndex(CODES)
    assert index.codebook_sizes == [3, 3, 2]
    assert index.allowed_codes(torch.zeros(1, 0, dtype=torch.long)).tolist() == [[True, True, True]]
    prefixes = torch.tensor([[0], [1], [2]])
    assert index.allowed_codes(prefixes).tolist() == [[True, True, True], [False, True, False], [True, True, True]]
    prefixes = torch.tensor([[0, 0], [1, 1], [2, 2], [1, 0]])  # (1, 0) is no item's prefix
    assert index.allowed_codes(prefixes).tolist() == [[True, True], [True, False], [False, True], [False, False]]


def test_code_index_maps_tuples_to_items_and_unknown_tuples_to_zero():
    index = CodeIndex(CODES)
    assert index.items(CODES[1:]).tolist() == list(range(1, len(CODES)))
    assert index.items(torch.tensor([[1, 0, 0], [2, 2, 0]])).tolist() == [0, 0]


def test_code_index_rejects_shared_tuples_and_half_padded_rows():
    with pytest.raises(ValueError, match="items 1 and 2 share the code tuple"):
        CodeIndex(torch.tensor([[-1, -1], [0, 1], [0, 1]]))
    with pytest.raises(ValueError, match="row 1 mixes valid and negative codes"):
        CodeIndex(torch.tensor([[-1, -1], [0, -1], [0, 1]]))


@pytest.mark.parametrize("seed", range(5))
def test_beam_search_only_emits_catalogue_items(seed):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.unique(torch.randint(0, 6, (40, 3), generator=generator), dim=0)
    codes = torch.cat([torch.full((1, 3), -1), codes])
    index = CodeIndex(codes)
    step, _ = random_step(index.codebook_sizes, seed)
    items, scores = constrained_beam_search(step, index, batch_size=1, beam_size=10)
    assert (items > 0).all() and torch.isfinite(scores).all()
    assert len(set(items[0].tolist())) == 10
    valid = {tuple(c) for c in codes[1:].tolist()}
    assert all(tuple(codes[i].tolist()) in valid for i in items[0].tolist())


def test_full_beam_equals_exhaustive_scoring():
    index = CodeIndex(CODES)
    step, score = random_step(index.codebook_sizes, seed=3)
    items, scores = constrained_beam_search(step, index, batch_size=2, beam_size=len(CODES) - 1)
    exhaustive = sorted(((score(CODES[i].tolist()), i) for i in range(1, len(CODES))), reverse=True)
    assert items[0].tolist() == [i for _, i in exhaustive] == items[1].tolist()
    assert scores[0].tolist() == pytest.approx([s for s, _ in exhaustive], abs=1e-6)


def test_beam_wider_than_the_catalogue_pads_with_dead_beams():
    index = CodeIndex(CODES)
    step, _ = random_step(index.codebook_sizes, seed=0)
    items, scores = constrained_beam_search(step, index, batch_size=1, beam_size=15)
    assert sorted(items[0, :9].tolist()) == list(range(1, 10))
    assert items[0, 9:].tolist() == [0] * 6 and torch.isinf(scores[0, 9:]).all()


def test_long_product_codes_are_indexed_and_decoded():
    """16 digits of 256 codes (+ a collision level) hold 256^16 tuples: far beyond an int64 hash of the whole
    tuple. The trie keys stay small, and a full beam with level-independent scores equals exhaustive scoring."""
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (50, 16), generator=generator)
    codes[1] = codes[0]  # two items share their 16 digits: told apart by the collision level
    collision = torch.zeros(50, 1, dtype=torch.long)
    collision[1] = 1
    codes = torch.cat([torch.full((1, 17), -1), torch.cat([codes, collision], 1)])
    index = CodeIndex(codes)
    assert index.codebook_sizes[-1] == 2 and index.items(codes[1:]).tolist() == list(range(1, 51))
    other = codes[1:2].clone()
    other[0, 5] = (other[0, 5] + 1) % 256
    assert index.items(other).tolist() == [0]
    tables = [torch.randn(size, generator=generator).log_softmax(0) for size in index.codebook_sizes]

    def step(prefix, parent):  # level t's log-probs depend on the level only
        return tables[prefix.shape[-1]].expand(*prefix.shape[:2], -1)

    items, scores = constrained_beam_search(step, index, batch_size=1, beam_size=50)
    exact = sum(tables[level][codes[1:, level]] for level in range(17))  # [50]
    expected = exact.argsort(descending=True) + 1
    assert sorted(items[0].tolist()) == list(range(1, 51))
    torch.testing.assert_close(scores[0], exact.sort(descending=True).values)
    assert items[0, :5].tolist() == expected[:5].tolist()
