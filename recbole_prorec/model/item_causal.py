"""The item-level causal layout of the generative models: one token per history item, a loss at every position.

References:
    Yupeng Hou et al. "Generating Long Semantic IDs in Parallel for Recommendation." in KDD 2025 (RPG: a code
    head that predicts an item's codes from one sequence state, with a loss at every position).
    Wang-Cheng Kang and Julian McAuley. "Self-Attentive Sequential Recommendation." in ICDM 2018 (SASRec).

Why this layout: TIGER's encoder-decoder learns from one (history -> next item) sample per training prefix,
re-encoding the same history for every prefix, and writes each code with a decoder pass. Here a causal
transformer reads a user's window of items once and every position predicts the next item's code tuple, so
one window gives up to `MAX_ITEM_LIST_LENGTH` training targets for the cost of one encoder pass. A history
item enters as the sum of its code embeddings (plus, optionally, its ID embedding); the next item's codes
come from a small head on the position's state (`CodeHead`).
"""

import torch
import torch.nn.functional as F
from recbole.model.layers import TransformerEncoder
from torch import nn

CODE_HEADS = ("parallel", "autoregressive")


class UniformDropout(nn.Dropout):
    """`nn.Dropout` whose mask comes from `uniform_` instead of `bernoulli_`: the same distribution, and on CPU the
    mask costs 2.5-6x less (`bernoulli_` was the largest single cost of a training step in
    `benchmarks/profile_step.py`)."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


def use_uniform_dropout(module):
    """Replace every `nn.Dropout` inside `module` (RecBole's layers create their own) by `UniformDropout`."""
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, UniformDropout(child.p))
        else:
            use_uniform_dropout(child)


class SequenceEncoder(nn.Module):
    """SASRec's sequence encoder, returning the state of every position (causal: position t sees items <= t).

    Parameter names are SASRec's (`item_embedding`, `position_embedding`, `LayerNorm`, `trm_encoder`), so the
    weights of a stage-1 PRORecTokenizer (a SASRec) load into it unchanged. `item_embedding=False` leaves the
    item-ID table out: the caller's `extra_input` (code embeddings) is then the only item input, as in TIGER.
    Sequences are left-aligned with padding item 0 at the end (RecBole's layout).
    """

    def __init__(
        self,
        n_items,
        max_seq_length,
        hidden_size,
        n_layers,
        n_heads,
        inner_size,
        hidden_dropout_prob,
        attn_dropout_prob,
        hidden_act,
        layer_norm_eps,
        item_embedding=True,
    ):
        super().__init__()
        self.item_embedding = nn.Embedding(n_items, hidden_size, padding_idx=0) if item_embedding else None
        self.position_embedding = nn.Embedding(max_seq_length, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)
        self.trm_encoder = TransformerEncoder(
            n_layers=n_layers,
            n_heads=n_heads,
            hidden_size=hidden_size,
            inner_size=inner_size,
            hidden_dropout_prob=hidden_dropout_prob,
            attn_dropout_prob=attn_dropout_prob,
            hidden_act=hidden_act,
            layer_norm_eps=layer_norm_eps,
        )
        use_uniform_dropout(self)

    def forward(self, item_seq, extra_input=None):
        """`item_seq [B, T]`, `extra_input [B, T, d]` or None -> states `[B, T, d]`."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        hidden = self.position_embedding(positions).unsqueeze(0)  # [1, T, d]
        if self.item_embedding is not None:
            hidden = hidden + self.item_embedding(item_seq)
        if extra_input is not None:
            hidden = hidden + extra_input
        hidden = self.dropout(self.LayerNorm(hidden))  # [B, T, d]
        visible = torch.tril((item_seq != 0)[:, None, None, :].expand(-1, -1, item_seq.shape[1], -1))
        attention_mask = torch.where(visible, 0.0, -10000.0)  # [B, 1, T, T], SASRec's additive mask
        return self.trm_encoder(hidden, attention_mask, output_all_encoded_layers=False)[-1]

    def load_stage_one(self, weights, source):
        """Copy a stage-1 SASRec's encoder weights (`{name: array}`) into this module; every name must match."""
        own = self.state_dict()
        missing = sorted(set(own) - set(weights))
        if missing:
            raise ValueError(
                f"{source} carries no stage-1 weights for {missing[:3]}{'...' if len(missing) > 3 else ''}: "
                "rebuild it with this version (python -m recbole_prorec.tokenize --checkpoint ...)"
            )
        for name, value in own.items():
            if tuple(weights[name].shape) != tuple(value.shape):
                raise ValueError(
                    f"stage-1 weight {name} in {source} has shape {tuple(weights[name].shape)}, this model's "
                    f"{tuple(value.shape)}: hidden_size, n_layers, inner_size and MAX_ITEM_LIST_LENGTH must equal "
                    "the tokenizer's for warm_start / stage_one_fusion"
                )
        self.load_state_dict({name: torch.as_tensor(weights[name]) for name in own})


class CodeHead(nn.Module):
    """The next item's code tuple from a sequence state, one level at a time.

    `parallel`: level l's logits are a linear map of the state alone, so an item's log-probability
    `sum_l log p_l(c_l)` is a sum of independent per-level terms and every item of the catalogue can be
    scored exactly with one gather per level (`all_item_scores`). `autoregressive`: level l reads the state
    plus the embeddings of the codes already written (`state + sum_{m<l} E_prefix[c_m]`, then a small MLP),
    so a residual code can depend on the coarse code before it; ranking then needs beam search.
    """

    def __init__(self, codebook_sizes, hidden_size, kind):
        super().__init__()
        if kind not in CODE_HEADS:
            raise ValueError(f"code_head must be one of {CODE_HEADS}, got {kind!r}")
        self.codebook_sizes = list(codebook_sizes)
        self.autoregressive = kind == "autoregressive"
        starts = torch.tensor([0] + self.codebook_sizes).cumsum(0)
        self.register_buffer("level_starts", starts[:-1], persistent=False)  # [L]
        self.output = nn.Linear(hidden_size, int(starts[-1]))  # level l's logits: its slice of the outputs
        if self.autoregressive:
            self.prefix_embedding = nn.Embedding(int(starts[-1]), hidden_size)
            self.mixer = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.LayerNorm(hidden_size))

    @property
    def num_levels(self):
        return len(self.codebook_sizes)

    def level_log_probs(self, state, prefix_codes, level):
        """`state [..., d]`, the codes already written `prefix_codes [..., level]` -> `[..., K_level]` log-probs."""
        hidden = state
        if self.autoregressive:
            if level > 0:
                prefix_tokens = prefix_codes + self.level_starts[:level]
                hidden = hidden + self.prefix_embedding(prefix_tokens).sum(-2)
            hidden = self.mixer(hidden)
        start = int(self.level_starts[level])
        rows = slice(start, start + self.codebook_sizes[level])
        logits = F.linear(hidden, self.output.weight[rows], self.output.bias[rows])
        return logits.float().log_softmax(-1)

    @torch.no_grad()
    def start_from_item_embeddings(self, item_embeddings, item_codes, sweeps=10):
        """Fit the code vectors so that each item's summed code vector approximates its stage-1 embedding, biases 0.

        Least squares `min_W sum_i |e_i - sum_l W_l[c_l(i)]|^2` over the real items (`item_codes [item_num, L]`,
        padding rows -1), solved by backfitting: level by level, each code vector becomes the mean residual of its
        items given the other levels, `sweeps` times. The first sweep's first level is the mean item embedding of
        each code. With states from a model that scores items by `state . e_i` (the warm-started SASRec), the
        untrained head then ranks items close to how stage 1 does, instead of from random vectors (parallel head
        only).
        """
        if self.autoregressive:
            raise ValueError("starting the code head from item embeddings needs the parallel code head")
        real = (item_codes >= 0).all(1)
        embeddings, codes = item_embeddings[real].float(), item_codes[real]
        tokens = codes + self.level_starts  # [n, L] rows of `output`
        weight = embeddings.new_zeros(self.output.weight.shape)
        counts = torch.bincount(tokens.flatten(), minlength=weight.shape[0]).clamp(min=1).unsqueeze(1)
        fitted = embeddings.new_zeros(embeddings.shape)  # sum_l W_l[c_l(i)]
        for _ in range(sweeps):
            for level in range(self.num_levels):
                rows = tokens[:, level]
                residual = embeddings - fitted + weight[rows]  # what level l should explain
                updated = weight.new_zeros(weight.shape).index_add_(0, rows, residual) / counts
                fitted += updated[rows] - weight[rows]
                start = int(self.level_starts[level])
                end = start + self.codebook_sizes[level]
                weight[start:end] = updated[start:end]
        self.output.weight.copy_(weight)
        self.output.bias.zero_()

    def parallel_log_probs(self, state):
        """Parallel head: every level's log-probabilities from `state [N, d]`, a list of `[N, K_l]`, computed once
        for what `code_log_probs` and `candidate_log_probs` then read from it (`level_log_probs`)."""
        if self.autoregressive:
            raise ValueError("the autoregressive head's level log-probabilities depend on the codes already written")
        return [self.level_log_probs(state, None, level) for level in range(self.num_levels)]

    def teacher_forced(self, state, codes):
        """`(code_log_probs(state, codes) [N, L], level log-probabilities)`: the second is the parallel head's
        `parallel_log_probs(state)` the first was read from, for candidate scoring to reuse (None for the
        autoregressive head, whose levels depend on the codes)."""
        level_log_probs = None if self.autoregressive else self.parallel_log_probs(state)
        return self.code_log_probs(state, codes, level_log_probs), level_log_probs

    def code_log_probs(self, state, codes, level_log_probs=None):
        """Teacher-forced `state [N, d]`, `codes [N, L]` -> `[N, L]` log-probability of each code.

        `level_log_probs`: the parallel head's `parallel_log_probs(state)`, when already computed.
        """
        if level_log_probs is not None:
            return torch.stack(
                [level.gather(-1, codes[:, i : i + 1]).squeeze(-1) for i, level in enumerate(level_log_probs)], dim=-1
            )
        return torch.stack(
            [
                self.level_log_probs(state, codes[:, :level], level).gather(-1, codes[:, level : level + 1]).squeeze(-1)
                for level in range(self.num_levels)
            ],
            dim=-1,
        )

    def candidate_log_probs(self, state, codes, level_log_probs=None):
        """Log-probability of several candidate items per state: `state [N, d]`, `codes [N, C, L]` -> `[N, C]`.

        The parallel head computes each level's log-probabilities once per state (or reads `level_log_probs`, its
        `parallel_log_probs(state)`) and gathers the candidates' codes; the autoregressive one runs each candidate's
        own prefix (what sampled-negative losses need).
        """
        if not self.autoregressive and level_log_probs is None:
            level_log_probs = self.parallel_log_probs(state)
        scores = 0
        for level in range(self.num_levels):
            if self.autoregressive:
                expanded = state.unsqueeze(1).expand(-1, codes.shape[1], -1)  # [N, C, d]
                log_probs = self.level_log_probs(expanded, codes[..., :level], level)  # [N, C, K]
                scores = scores + log_probs.gather(-1, codes[..., level : level + 1]).squeeze(-1)
            else:
                scores = scores + level_log_probs[level].gather(1, codes[..., level])
        return scores

    def item_logits(self, state, item_codes):
        """Logits of every item as one softmax (parallel head only): `state [N, d]` -> `[N, item_num]`.

        Item i's logit is `state . sum_l W_l[c_l(i)] + sum_l b_l[c_l(i)]`, which differs from its exact score
        `sum_l log p_l(c_l(i))` (`all_item_scores`) only by `sum_l logsumexp_l`, the same for every item: a
        cross-entropy over these logits trains the very ranking that evaluation reads (item-level loss, RPG). One
        matmul against per-item output vectors, each the sum of the item's code rows; padding (row 0) is -inf.
        """
        if self.autoregressive:
            raise ValueError("item-level logits need the parallel code head (item_loss_weight > 0)")
        tokens = item_codes.clamp(min=0) + self.level_starts  # [item_num, L]
        weight = F.embedding_bag(tokens, self.output.weight, mode="sum")  # [item_num, d]
        bias = self.output.bias[tokens].sum(1)  # [item_num]
        logits = F.linear(state, weight, bias)
        padding = (item_codes < 0).any(1)
        # the training loss passes the real items only: no [N, item_num] copy to mask then
        return logits.masked_fill(padding, -torch.inf) if padding.any() else logits

    def all_item_scores(self, state, item_codes):
        """Exact log-probability of every item (parallel head only): `state [B, d]` -> `[B, item_num]`.

        `item_codes [item_num, L]` with row 0 (padding) all -1, which scores -inf.
        """
        if self.autoregressive:
            raise ValueError("exact scoring of every item needs the parallel code head; rank with beam search")
        codes = item_codes.clamp(min=0)  # [item_num, L]
        scores = self.level_log_probs(state, None, 0).index_select(1, codes[:, 0])  # [B, item_num]
        for level in range(1, self.num_levels):  # index_select + add_: ~2.5x faster than fancy-indexing and sum
            scores.add_(self.level_log_probs(state, None, level).index_select(1, codes[:, level]))
        return scores.masked_fill_((item_codes < 0).any(1), -torch.inf)


def next_items(item_seq, item_seq_len, target_items):
    """The item each position of a window predicts: `item_seq [B, T]` shifted left, the target after the last item.

    Position t of a left-aligned history predicts item t+1, and the last real position predicts
    `target_items`; padding positions get 0. Returns `[B, T]`.
    """
    shifted = F.pad(item_seq[:, 1:], (0, 1))  # [B, T]
    return shifted.scatter(1, (item_seq_len - 1).unsqueeze(1), target_items.unsqueeze(1))


def visible_history(item_seq):
    """`[B, T]` -> `[B, T, T]`: row t holds the items position t has seen (later positions set to 0)."""
    steps = torch.arange(item_seq.shape[1], device=item_seq.device)
    seen = steps.unsqueeze(1) >= steps.unsqueeze(0)  # [T, T]
    return item_seq.unsqueeze(1).masked_fill(seen.logical_not(), 0)
