"""Constrained beam search over item code tuples: only tuples that name an item of the catalogue are generated.

The catalogue's tuples become lookup tensors once (`CodeIndex`): per level, the sorted keys of every valid
prefix and a dense mask of the codes that may follow each of them. Decoding a level is then a few
`torch.searchsorted` calls and one gather for all users and beams at once, with no Python callback per beam (a
prefix trie walked per beam is what makes public TIGER implementations slow), and no invalid tuple is ever
produced, so nothing has to be repaired afterwards.
"""

import torch
from torch import nn


class CodeIndex(nn.Module):
    """The valid code tuples of a catalogue, as tensors for constrained decoding.

    `item_codes` is the artifact's `[item_num, L]` code table in RecBole's internal item order; rows with a
    negative code (the `[PAD]` row 0) are not items. The valid prefixes form a trie stored level by level: the
    node of a length-t prefix is its rank among the valid length-t prefixes, and the length-(t+1) prefix that
    extends node `n` with code `c` has the key `n * K_t + c`; `prefix_keys_{t+1}` holds these keys sorted, so a
    key's position is the child's node. Keys stay below `item_num * K` whatever the number of levels (a
    mixed-radix hash of the whole tuple overflows int64 for long product-quantized codes, e.g. 16 x 256).
    Buffers are not saved with the model: they are derived from the artifact the model is built from.
    """

    def __init__(self, item_codes):
        super().__init__()
        codes = torch.as_tensor(item_codes, dtype=torch.long)
        if codes.ndim != 2 or codes.shape[1] == 0:
            raise ValueError(f"item_codes must be [item_num, L] with L >= 1, got shape {tuple(codes.shape)}")
        is_item = (codes >= 0).all(1)
        partial = is_item.logical_not() & (codes >= 0).any(1)
        if partial.any():
            row = int(partial.nonzero()[0])
            raise ValueError(f"item_codes row {row} mixes valid and negative codes: {codes[row].tolist()}")
        item_ids = is_item.nonzero().squeeze(1)  # [N]
        if item_ids.numel() == 0:
            raise ValueError("item_codes holds no item (every row has a negative code)")
        codes = codes[item_ids]  # [N, L]
        self.codebook_sizes = [int(k) + 1 for k in codes.max(0).values]

        node = torch.zeros(len(codes), dtype=torch.long)  # each item's prefix node at the current length
        for level, size in enumerate(self.codebook_sizes):
            next_code_mask = torch.zeros(int(node.max()) + 1, size, dtype=torch.bool)
            next_code_mask[node, codes[:, level]] = True
            keys, node = torch.unique(node * size + codes[:, level], sorted=True, return_inverse=True)
            self.register_buffer(f"next_code_mask_{level}", next_code_mask, persistent=False)  # [P_level, K_level]
            self.register_buffer(f"prefix_keys_{level + 1}", keys, persistent=False)  # [P_{level+1}]

        if len(keys) < len(codes):
            first_of_node = torch.full((len(keys),), -1, dtype=torch.long)
            for row, tuple_node in enumerate(node.tolist()):
                if first_of_node[tuple_node] >= 0:
                    first = int(first_of_node[tuple_node])
                    raise ValueError(
                        f"items {int(item_ids[first])} and {int(item_ids[row])} share the code tuple "
                        f"{codes[row].tolist()}: codes must be unique per item (add a collision level)"
                    )
                first_of_node[tuple_node] = row
        tuple_items = torch.zeros(len(keys), dtype=torch.long).scatter_(0, node, item_ids)
        self.register_buffer("tuple_items", tuple_items, persistent=False)  # [N], the item of each full tuple

    @property
    def num_levels(self):
        return len(self.codebook_sizes)

    def prefix_nodes(self, prefix):
        """`prefix [..., t]` codes -> `(node [...], found [...])`: each prefix's trie node and whether it is a valid
        prefix at all (node 0 where it is not)."""
        node = torch.zeros(prefix.shape[:-1], dtype=torch.long, device=prefix.device)
        found = torch.ones(prefix.shape[:-1], dtype=torch.bool, device=prefix.device)
        for level in range(prefix.shape[-1]):
            keys = getattr(self, f"prefix_keys_{level + 1}")
            wanted = node * self.codebook_sizes[level] + prefix[..., level]
            node = torch.searchsorted(keys, wanted).clamp_(max=len(keys) - 1)
            found &= keys[node] == wanted
            node.masked_fill_(found.logical_not(), 0)
        return node, found

    def allowed_codes(self, prefix):
        """`prefix [..., t]` -> bool `[..., K_t]`: the level-t codes that continue it towards some item."""
        node, found = self.prefix_nodes(prefix)
        return getattr(self, f"next_code_mask_{prefix.shape[-1]}")[node] & found.unsqueeze(-1)

    def items(self, codes):
        """`codes [..., L]` full tuples -> `[...]` internal item ids, 0 where the tuple names no item."""
        node, found = self.prefix_nodes(codes)
        return self.tuple_items[node].masked_fill(found.logical_not(), 0)


def constrained_beam_search(step_log_probs, index, batch_size, beam_size, device=None):
    """The `beam_size` best valid code tuples per sequence, found level by level.

    `step_log_probs(prefix, parent)` maps the beams' code prefixes `[B, W, t]` to the log-probabilities of
    level t's codes `[B, W, K_t]`; `parent [B, W]` says which beam of the previous call each beam extends (None
    at level 0, where `W == 1`: every beam starts from the same empty prefix), so a caller can reorder a cache.
    A tuple's score is the sum of its codes' log-probabilities, as in teacher-forced scoring; invalid
    continuations are masked (not renormalised), so scores equal the model's own log-probabilities of the items.
    Beams that run out of valid continuations (fewer than `beam_size` items below the surviving prefixes) end
    with item 0 and score -inf. Deterministic: ties are broken by `torch.topk`.

    Returns `items [B, beam_size]` (internal ids) and `scores [B, beam_size]`, best first.
    """
    prefix = torch.zeros(batch_size, 1, 0, dtype=torch.long, device=device)  # [B, W, t]
    scores = torch.zeros(batch_size, 1, device=device)  # [B, W]
    parent = None
    for level, codebook_size in enumerate(index.codebook_sizes):
        log_probs = step_log_probs(prefix, parent).float()  # [B, W, K]
        invalid = index.allowed_codes(prefix).logical_not()  # [B, W, K]
        candidates = (scores.unsqueeze(-1) + log_probs).masked_fill(invalid, -torch.inf).flatten(1)  # [B, W*K]
        if candidates.shape[1] < beam_size:
            candidates = nn.functional.pad(candidates, (0, beam_size - candidates.shape[1]), value=-torch.inf)
        scores, flat = candidates.topk(beam_size, dim=1)  # [B, beam]
        parent = torch.div(flat, codebook_size, rounding_mode="floor").clamp_(max=prefix.shape[1] - 1)
        parent_prefix = prefix.gather(1, parent.unsqueeze(-1).expand(-1, -1, level))  # [B, beam, t]
        prefix = torch.cat([parent_prefix, (flat % codebook_size).unsqueeze(-1)], dim=-1)  # [B, beam, t+1]
    items = index.items(prefix).masked_fill(scores == -torch.inf, 0)
    return items, scores
