"""Encoder-decoder transformer over item code tokens, shared by TIGER and PRORec.

Reference:
    Shashank Rajput et al. "Recommender Systems with Generative Retrieval." in NeurIPS 2023 (TIGER).

The encoder reads the codes of the user's last items, the decoder writes the next item's codes level by level.
Layers are PyTorch's `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer` (pre-norm); the token layout,
the length bucketing and the cached decoding steps of beam search are ours.

Sizes: TIGER used d_model 128 with 6 heads of width 64 (T5's attention is wider than its model);
`nn.MultiheadAttention` ties the attention width to d_model, so 6 heads do not divide 128 and the defaults use
4 heads of width 32 (TIGER.yaml's `attention_heads`).
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from recbole_prorec.model.beam_search import constrained_beam_search

PAD, BOS = 0, 1
NUM_SPECIAL_TOKENS = 2
HISTORY_TOKENS = ("per_code", "per_item")


class Seq2SeqOutput(NamedTuple):
    logits: torch.Tensor  # [B, L, K_max] level l's logits over level l's codes, -inf past K_l
    decoder_hidden: torch.Tensor  # [B, L, d] decoder states that produce them
    memory_mean: torch.Tensor  # [B, d] encoder output averaged over non-padding positions


class CodeSeq2Seq(nn.Module):
    """History items' code tuples -> next item's code tuple.

    Vocabulary: `PAD`, `BOS`, then one block of tokens per code level (token = `offset[l] + code`), so equal
    codes at different levels are different tokens. One embedding table serves encoder input, decoder input and
    output (tied, as in T5); level l's logits span only level l's block, which is the per-level output mask.

    `history_tokens`: `"per_code"` gives the encoder one token per history code (`T * L` tokens, TIGER's
    layout); `"per_item"` one token per history item, the sum of its code embeddings (`T` tokens, about L times
    cheaper to encode). Positions count back from the most recent item. `num_user_buckets > 0` prepends a user
    token, `user_id % num_user_buckets` (TIGER's hashed user id); 0 disables it.

    Histories are left-aligned (RecBole's layout: padding items, all codes -1, at the end). Batches are split
    into `chunk_size` sequences of similar length, each trimmed to its longest history, because most histories
    are far shorter than `max_history` (Beauty: mean 6.7 of 20 in training) and padding would dominate the cost
    (chunks of 64 train 2x faster than whole batches of 256 on Beauty's lengths; results are the same).
    """

    def __init__(
        self,
        codebook_sizes,
        max_history,
        d_model=128,
        n_heads=4,
        encoder_layers=4,
        decoder_layers=4,
        d_ff=1024,
        dropout=0.1,
        history_tokens="per_code",
        num_user_buckets=0,
        chunk_size=64,
    ):
        super().__init__()
        if history_tokens not in HISTORY_TOKENS:
            raise ValueError(f"history_tokens must be one of {HISTORY_TOKENS}, got {history_tokens!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by the number of heads ({n_heads})")
        self.codebook_sizes = list(codebook_sizes)
        self.num_levels = len(self.codebook_sizes)
        self.history_tokens = history_tokens
        self.num_user_buckets = num_user_buckets
        self.chunk_size = chunk_size
        offsets = torch.tensor([NUM_SPECIAL_TOKENS] + self.codebook_sizes).cumsum(0)
        self.register_buffer("level_offsets", offsets[:-1], persistent=False)  # [L]
        code = torch.arange(max(self.codebook_sizes))
        sizes = torch.tensor(self.codebook_sizes).unsqueeze(1)
        # [L, K_max] token of each (level, code); codes past a level's codebook point at its last token, masked.
        level_tokens = self.level_offsets.unsqueeze(1) + torch.minimum(code, sizes - 1)
        self.register_buffer("level_tokens", level_tokens, persistent=False)
        self.register_buffer("level_code_valid", code < sizes, persistent=False)  # [L, K_max]

        self.token_embedding = nn.Embedding(int(offsets[-1]), d_model, padding_idx=PAD)
        self.output_bias = nn.Parameter(torch.zeros(int(offsets[-1])))
        self.history_position = nn.Embedding(max_history, d_model)
        self.decoder_position = nn.Embedding(self.num_levels, d_model)
        self.user_embedding = nn.Embedding(num_user_buckets, d_model) if num_user_buckets > 0 else None
        self.dropout = nn.Dropout(dropout)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, batch_first=True, norm_first=True),
            encoder_layers,
            norm=nn.LayerNorm(d_model),
            enable_nested_tensor=False,
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d_model, n_heads, d_ff, dropout, batch_first=True, norm_first=True),
            decoder_layers,
            norm=nn.LayerNorm(d_model),
        )

    @classmethod
    def from_config(cls, codebook_sizes, max_history, config):
        """Built from the seq2seq options of `properties/model/TIGER.yaml` (a RecBole Config or a plain dict)."""
        return cls(
            codebook_sizes,
            max_history,
            d_model=config["d_model"],
            n_heads=config["attention_heads"],
            encoder_layers=config["encoder_layers"],
            decoder_layers=config["decoder_layers"],
            d_ff=config["d_ff"],
            dropout=config["dropout"],
            history_tokens=config["history_tokens"],
            num_user_buckets=config["n_user_buckets"],
        )

    def code_tokens(self, codes):
        """`codes [..., L']` (levels 0..L'-1, negative = padding) -> token ids `[..., L']`."""
        return (codes + self.level_offsets[: codes.shape[-1]]).masked_fill(codes < 0, PAD)

    def length_chunks(self, history_codes):
        """Split a batch into chunks of similar history length: `[(rows, longest history in rows)]`."""
        length = (history_codes[..., 0] >= 0).sum(1)  # [B]
        order = length.argsort(stable=True)
        return [(rows, max(int(length[rows[-1]]), 1)) for rows in order.split(self.chunk_size)]

    def encode(self, history_codes, user_ids=None):
        """`history_codes [B, T, L]` (left-aligned, padding items all -1) -> memory `[B, S, d]`, padding `[B, S]`."""
        tokens = self.code_tokens(history_codes)  # [B, T, L]
        item_pad = tokens[..., 0] == PAD  # [B, T]
        length = item_pad.logical_not().sum(1, keepdim=True)  # [B, 1]
        recency = (length - 1 - torch.arange(tokens.shape[1], device=tokens.device)).clamp_(min=0)  # [B, T]
        if self.history_tokens == "per_item":
            hidden = self.token_embedding(tokens).sum(2) + self.history_position(recency)  # [B, T, d]
            pad = item_pad
        else:
            hidden = self.token_embedding(tokens) + self.history_position(recency).unsqueeze(2)  # [B, T, L, d]
            hidden, pad = hidden.flatten(1, 2), (tokens == PAD).flatten(1)  # [B, T*L, d], [B, T*L]
        if self.user_embedding is not None:
            user = self.user_embedding(user_ids % self.num_user_buckets).unsqueeze(1)  # [B, 1, d]
            hidden = torch.cat([user, hidden], dim=1)
            pad = F.pad(pad, (1, 0), value=False)
        return self.encoder(self.dropout(hidden), src_key_padding_mask=pad), pad

    def decode(self, memory, memory_pad, prefix_codes):
        """Teacher-forced decoder states for `[BOS, prefix]`: `prefix_codes [B, t]` -> `[B, t+1, d]`."""
        bos = prefix_codes.new_full((prefix_codes.shape[0], 1), BOS)
        tokens = torch.cat([bos, self.code_tokens(prefix_codes)], dim=1)  # [B, t+1]
        hidden = self.token_embedding(tokens) + self.decoder_position.weight[: tokens.shape[1]]
        causal = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], device=tokens.device, dtype=torch.bool)
        return self.decoder(
            self.dropout(hidden), memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=memory_pad
        )

    def level_logits(self, hidden, level):
        """`hidden [..., d]` at decoder position `level` -> logits over level `level`'s codes `[..., K_level]`."""
        tokens = self.level_tokens[level, : self.codebook_sizes[level]]  # [K_l]
        return hidden @ self.token_embedding.weight[tokens].T + self.output_bias[tokens]

    def _forward_chunk(self, history_codes, target_codes, user_ids):
        memory, memory_pad = self.encode(history_codes, user_ids)
        decoder_hidden = self.decode(memory, memory_pad, target_codes[:, :-1])  # [B, L, d]
        weight = self.token_embedding.weight[self.level_tokens]  # [L, K_max, d]
        logits = torch.einsum("bld,lkd->blk", decoder_hidden, weight) + self.output_bias[self.level_tokens]
        logits = logits.masked_fill(self.level_code_valid.logical_not(), -torch.inf)  # [B, L, K_max]
        keep = memory_pad.logical_not().unsqueeze(-1)  # [B, S, 1]
        memory_mean = (memory * keep).sum(1) / keep.sum(1)  # [B, d]
        return Seq2SeqOutput(logits, decoder_hidden, memory_mean)

    def forward(self, history_codes, target_codes, user_ids=None):
        """Teacher-forced pass: the decoder reads `[BOS, target_codes[:, :-1]]` and predicts all L levels."""
        chunks = self.length_chunks(history_codes)
        outputs = [
            self._forward_chunk(
                history_codes[rows, :length], target_codes[rows], None if user_ids is None else user_ids[rows]
            )
            for rows, length in chunks
        ]
        restore = torch.cat([rows for rows, _ in chunks]).argsort()
        return Seq2SeqOutput(*(torch.cat(parts)[restore] for parts in zip(*outputs)))

    @staticmethod
    def code_log_probs(logits, target_codes):
        """`logits [B, L, K_max]`, `target_codes [B, L]` -> `[B, L]` log-probability of each target code."""
        return logits.float().log_softmax(-1).gather(-1, target_codes.unsqueeze(-1)).squeeze(-1)

    def _beam_search_chunk(self, history_codes, user_ids, index, beam_size):
        """Encoder once; then one decoder token per beam and level, attending to cached earlier positions.

        The cache holds each decoder layer's normalised self-attention inputs `[B, W, t, d]` (pre-norm layers:
        they never change once computed) and is reordered with the beams; cross-attention queries of all beams
        of a user share that user's memory. Same arithmetic as `decode`, with 1 new token per beam and step
        instead of re-running the whole prefix (1 + 3W decoder tokens per user instead of 1 + 9W for L = 4):
        measured on Beauty-sized inputs, 2.5x (fp32) / 1.4x (bf16) faster than re-running the prefix, and 9x
        faster than re-running it against a memory copied per beam.
        """
        memory, memory_pad = self.encode(history_codes, user_ids)  # [B, S, d]
        batch = memory.shape[0]
        cache = [None] * len(self.decoder.layers)

        def step_log_probs(prefix, parent):  # prefix [B, W, t], parent [B, W] or None -> [B, W, K_t]
            level, beams = prefix.shape[-1], prefix.shape[1]
            if level == 0:
                tokens = prefix.new_full((batch, 1), BOS)  # [B, 1]
            else:
                tokens = self.code_tokens(prefix)[..., -1]  # [B, W]
            x = self.token_embedding(tokens) + self.decoder_position.weight[level]  # [B, W, d]
            for i, layer in enumerate(self.decoder.layers):
                normed = layer.norm1(x)
                if level > 0:
                    past = cache[i].gather(1, parent[..., None, None].expand(-1, -1, *cache[i].shape[2:]))
                    normed_seq = torch.cat([past, normed.unsqueeze(2)], dim=2)  # [B, W, t+1, d]
                else:
                    normed_seq = normed.unsqueeze(2)
                cache[i] = normed_seq
                keys = normed_seq.flatten(0, 1)  # [B*W, t+1, d]
                attended = layer.self_attn(normed.flatten(0, 1).unsqueeze(1), keys, keys, need_weights=False)[0]
                x = x + layer.dropout1(attended.view(batch, beams, -1))
                x = x + layer._mha_block(layer.norm2(x), memory, None, memory_pad)
                x = x + layer._ff_block(layer.norm3(x))
            return self.level_logits(self.decoder.norm(x), level).float().log_softmax(-1)

        return constrained_beam_search(step_log_probs, index, batch, beam_size, memory.device)

    def beam_search(self, history_codes, index, beam_size, user_ids=None):
        """Top `beam_size` valid items per sequence: `items [B, W]` (internal ids), `scores [B, W]` (log-probs)."""
        chunks = self.length_chunks(history_codes)
        results = [
            self._beam_search_chunk(
                history_codes[rows, :length], None if user_ids is None else user_ids[rows], index, beam_size
            )
            for rows, length in chunks
        ]
        restore = torch.cat([rows for rows, _ in chunks]).argsort()
        items, scores = (torch.cat(parts)[restore] for parts in zip(*results))
        return items, scores
