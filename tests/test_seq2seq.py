"""CodeSeq2Seq: per-level output masks, length bucketing, cached beam decoding equal to teacher forcing, training."""

import pytest
import torch

from recbole_prorec.model.beam_search import CodeIndex
from recbole_prorec.model.seq2seq import PAD, CodeSeq2Seq

# 12 items over codebooks of sizes 3, 4, 2 (row 0 = padding item).
CODES = torch.tensor(
    [
        [-1, -1, -1],
        [0, 0, 0],
        [0, 0, 1],
        [0, 3, 0],
        [1, 1, 0],
        [1, 2, 0],
        [1, 2, 1],
        [2, 0, 0],
        [2, 0, 1],
        [2, 3, 1],
        [0, 1, 1],
        [2, 1, 0],
        [1, 3, 0],
    ]
)
NUM_ITEMS = len(CODES) - 1
HISTORIES = torch.tensor([[1, 2, 3, 0, 0], [4, 0, 0, 0, 0], [5, 6, 7, 8, 9], [10, 11, 0, 0, 0]])  # left-aligned
USERS = torch.tensor([0, 3, 7, 11])


def tiny_model(history_tokens="per_code", user_buckets=5, chunk_size=3, seed=0):
    torch.manual_seed(seed)
    model = CodeSeq2Seq(
        [3, 4, 2],
        max_history=5,
        d_model=16,
        n_heads=2,
        encoder_layers=2,
        decoder_layers=2,
        d_ff=32,
        history_tokens=history_tokens,
        num_user_buckets=user_buckets,
        chunk_size=chunk_size,
    )
    return model.eval()


def exhaustive_scores(model, histories, users):
    """`[B, NUM_ITEMS]` teacher-forced log-probability of every item's code tuple."""
    batch = len(histories)
    targets = CODES[1:].repeat(batch, 1)  # [B*N, L]
    output = model(CODES[histories.repeat_interleave(NUM_ITEMS, 0)], targets, users.repeat_interleave(NUM_ITEMS))
    return model.code_log_probs(output.logits, targets).sum(-1).view(batch, NUM_ITEMS)


def test_level_tokens_are_disjoint_blocks_after_the_specials():
    model = tiny_model()
    tokens = model.code_tokens(torch.tensor([[0, 0, 0], [2, 3, 1], [-1, -1, -1]]))
    assert tokens.tolist() == [[2, 5, 9], [4, 8, 10], [PAD, PAD, PAD]]
    assert model.token_embedding.num_embeddings == 2 + 3 + 4 + 2


def test_each_level_predicts_only_its_own_codebook():
    output = tiny_model()(CODES[HISTORIES], CODES[[1, 4, 9, 12]], USERS)
    assert output.logits.shape == (4, 3, 4) and output.decoder_hidden.shape == (4, 3, 16)
    finite = torch.isfinite(output.logits)
    assert finite[:, 0, :3].all() and not finite[:, 0, 3:].any()
    assert finite[:, 1].all()
    assert finite[:, 2, :2].all() and not finite[:, 2, 2:].any()


@pytest.mark.parametrize("history_tokens", ["per_code", "per_item"])
def test_length_bucketing_does_not_change_the_output(history_tokens):
    histories, targets = CODES[HISTORIES], CODES[[1, 4, 9, 12]]
    bucketed = tiny_model(history_tokens, chunk_size=1)(histories, targets, USERS)
    whole = tiny_model(history_tokens, chunk_size=64)(histories, targets, USERS)
    for a, b in zip(bucketed, whole):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("history_tokens,user_buckets", [("per_code", 5), ("per_item", 5), ("per_code", 0)])
def test_full_beam_ranks_items_exactly_like_teacher_forced_scoring(history_tokens, user_buckets):
    model = tiny_model(history_tokens, user_buckets)
    with torch.no_grad():
        items, scores = model.beam_search(CODES[HISTORIES], CodeIndex(CODES), NUM_ITEMS, USERS)
        expected = exhaustive_scores(model, HISTORIES, USERS)  # [B, N]
    expected_scores, expected_order = expected.sort(dim=1, descending=True)
    assert items.tolist() == (expected_order + 1).tolist()
    torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-4)


def test_narrow_beam_returns_valid_distinct_items_best_first():
    model = tiny_model()
    with torch.no_grad():
        items, scores = model.beam_search(CODES[HISTORIES], CodeIndex(CODES), 4, USERS)
        expected = exhaustive_scores(model, HISTORIES, USERS)
    assert ((items >= 1) & (items <= NUM_ITEMS)).all()
    assert all(len(set(row)) == 4 for row in items.tolist())
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    torch.testing.assert_close(scores, expected.gather(1, items - 1), atol=1e-4, rtol=1e-4)


def test_beam_search_is_deterministic():
    model = tiny_model()
    with torch.no_grad():
        first = model.beam_search(CODES[HISTORIES], CodeIndex(CODES), 5, USERS)
        second = model.beam_search(CODES[HISTORIES], CodeIndex(CODES), 5, USERS)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("bf16", [False, True])
def test_loss_decreases_over_a_few_steps(bf16):
    model = tiny_model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    histories, targets = CODES[HISTORIES], CODES[[1, 4, 9, 12]]
    losses = []
    for _ in range(20):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = model(histories, targets, USERS)
        loss = -model.code_log_probs(output.logits, targets).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_options_are_rejected_with_their_names():
    with pytest.raises(ValueError, match="history_tokens must be one of"):
        CodeSeq2Seq([3, 4], 5, d_model=16, n_heads=2, history_tokens="per_user")
    with pytest.raises(ValueError, match=r"d_model \(128\) must be divisible by the number of heads \(6\)"):
        CodeSeq2Seq([3, 4], 5, n_heads=6)
