"""TIGER: generative retrieval over semantic IDs, as a RecBole sequential recommender.

Reference:
    Shashank Rajput et al. "Recommender Systems with Generative Retrieval." in NeurIPS 2023.

Items are code tuples from an `ItemCodeArtifact` (`tokenizer_artifact`); for TIGER itself those are RQ-VAE
codes of the items' text embeddings, built and cached by `build_semantic_artifact`. The model generates the next
item's code tuple from the codes of the last `MAX_ITEM_LIST_LENGTH` items, in one of two layouts (`layout`, see
the class): the item-causal one (`model/item_causal.py`, the default: it learns far more per CPU-second) or the
paper's encoder-decoder (`model/seq2seq.py`). Either way every score is a log-probability of an item's codes,
and invalid code tuples are never ranked.
"""

import hashlib
import logging
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_prorec.data.windows import WindowedSequentialDataset
from recbole_prorec.model.beam_search import CodeIndex, constrained_beam_search
from recbole_prorec.model.item_causal import CodeHead, SequenceEncoder, next_items, visible_history
from recbole_prorec.model.seq2seq import CodeSeq2Seq
from recbole_prorec.precision import resolve_bf16
from recbole_prorec.quantization import ItemCodeArtifact, quantize
from recbole_prorec.semantic import semantic_embeddings
from recbole_prorec.trainer import ScheduledTrainer
from recbole_prorec.utils import cache_dir, data_fingerprint, settings_digest

logger = logging.getLogger(__name__)

LAYOUTS = ("item_causal", "seq2seq")
SEMANTIC_QUANTIZERS = ("rqvae", "pq")


def semantic_artifact_settings(dataset, config):
    """Everything that decides TIGER's item codes, as a JSON-ready dict (the cache key).

    `semantic_quantizer` 'rqvae' is TIGER's RQ-VAE (`rqvae_*` options); 'pq' cuts the same text embeddings into
    `pq_digits` product-quantized digits (RPG's long codes, `pq_*` options).
    """
    method = config["semantic_quantizer"] or "rqvae"
    if method not in SEMANTIC_QUANTIZERS:
        raise ValueError(f"semantic_quantizer must be one of {SEMANTIC_QUANTIZERS}, got {method!r}")
    item_tokens = "\n".join(str(t) for t in dataset.field2id_token[dataset.iid_field])
    settings = {
        "dataset": config["dataset"],
        "items_sha1": hashlib.sha1(item_tokens.encode()).hexdigest(),
        "data_sha256": data_fingerprint(config),
        "text_fields": list(config["text_fields"] or []),
        "semantic_model": config["semantic_model"],
        "method": method,
        "seed": config["seed"],
    }
    if method == "pq":
        return {**settings, "levels": config["pq_digits"], "codebook_size": config["pq_codebook_size"]}
    return {
        **settings,
        "levels": config["rqvae_levels"],
        "codebook_size": config["rqvae_codebook_size"],
        "rqvae_kwargs": dict(config["rqvae_kwargs"] or {}),
    }


def build_semantic_artifact(dataset, config):
    """TIGER's item codes: RQ-VAE (or product quantization) of the items' semantic embeddings, cached; returns the
    artifact path prefix.

    The artifact lives under `cache_dir(config)/artifacts/` named by dataset and a hash of
    `semantic_artifact_settings`, so a second run (or a run with only training options changed) reuses it.
    Its `embeddings` are the semantic embeddings that were quantized.
    """
    settings = semantic_artifact_settings(dataset, config)
    method = settings["method"]
    path = cache_dir(config) / "artifacts" / f"{config['dataset']}-TIGER-{method}-{settings_digest(settings)}"
    if path.with_name(path.name + ".npz").is_file() and path.with_name(path.name + ".json").is_file():
        logger.info(f"Reusing TIGER's semantic-ID artifact {path}")
        return str(path)
    logger.info(f"Building TIGER's semantic-ID artifact {path} ({method} over semantic embeddings)")
    embeddings = semantic_embeddings(dataset, config)  # [item_num, d], row 0 = pad
    result = quantize(
        embeddings[1:],
        method=method,
        levels=settings["levels"],
        codebook_size=settings["codebook_size"],
        seed=settings["seed"],
        rqvae_kwargs=settings.get("rqvae_kwargs"),
    )
    item_tokens = dataset.field2id_token[dataset.iid_field]
    ItemCodeArtifact.from_quantization(result, item_tokens, embeddings.numpy(), settings).save(path)
    return str(path)


class GenerationStep(NamedTuple):
    """What one training batch of a generative model computes, one row per predicted item (N rows)."""

    code_log_probs: torch.Tensor  # [N, L] log-probability of each code of the target item (teacher-forced)
    target_items: torch.Tensor  # [N] the predicted items
    target_state: torch.Tensor  # [N, d] a state that predicts the target and has not seen any of its codes
    history_state: torch.Tensor  # [N, d] a summary of the history it was predicted from
    history_items: torch.Tensor  # [N, T] the items of that history (0 = not part of it)
    # parallel code head: every level's log-probabilities [N, K_l] from target_state (what code_log_probs was read
    # from; a sampled-negative loss reads its candidates from them too), else None
    level_log_probs: Optional[list] = None


class TIGER(SequentialRecommender):
    """Generative recommender over item codes, trained with per-level code cross-entropy.

    Two layouts (`layout`):
    - `item_causal` (default): a causal transformer over one token per history item with a loss at every
      position (`model/item_causal.py`), trained on non-overlapping windows (`train_windows`); a parallel code
      head ranks every item exactly by `sum_l log p_l(c_l)`, an autoregressive one by constrained beam search.
    - `seq2seq`: TIGER's paper layout, an encoder-decoder (`CodeSeq2Seq`) trained on every prefix and ranked by
      constrained beam search (`properties/layout/seq2seq.yaml`).

    `item_id_output` (item-causal layout, parallel head, with `item_id_input`) adds `state . e_i`, the item's own
    ID embedding, to its code logits in the item-level loss and the ranking: a dense item vector beside the codes.
    With `code_output: False` it replaces them: items are ranked by their ID embedding alone and the codes are an
    input only (a diagnostic of where stage 2's ranking is capped, issue 30). `code_input: False` (with
    `item_id_input`) leaves the codes out of the history too, the second half of that diagnostic.

    `full_sort_predict` returns `[B, n_items]`: exact scores, or beam log-probabilities for the `beam_size`
    generated items and -inf elsewhere, so RecBole's metrics apply unchanged. `predict` scores given items by the
    teacher-forced log-probability of their code tuple (the same quantity).
    """

    input_type = InputType.POINTWISE
    dataset_class = WindowedSequentialDataset
    trainer_class = ScheduledTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.layout = config["layout"]
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        self.beam_size = config["beam_size"]
        largest_topk = max(config["topk"]) if config["topk"] else 0
        if self.beam_size < largest_topk:
            raise ValueError(
                f"beam_size ({self.beam_size}) must be >= the largest topk ({largest_topk}): beam search returns "
                f"beam_size items per user and every other item scores -inf; set beam_size >= {largest_topk}"
            )
        self.bf16 = resolve_bf16(config["bf16"], config["device"])
        self.item_loss_weight = config["item_loss_weight"] or 0.0
        self.code_loss_weight = 1.0 if config["code_loss_weight"] is None else config["code_loss_weight"]
        self.item_label_smoothing = config["item_label_smoothing"] or 0.0
        if not 0 <= self.item_label_smoothing < 1:
            raise ValueError(f"item_label_smoothing must be in [0, 1), got {self.item_label_smoothing}")
        if self.item_loss_weight < 0 or self.code_loss_weight < 0:
            raise ValueError(
                "item_loss_weight and code_loss_weight must be >= 0, "
                f"got {self.item_loss_weight} and {self.code_loss_weight}"
            )
        if not self.item_loss_weight and not self.code_loss_weight:
            raise ValueError("code_loss_weight 0 leaves no generation loss: set item_loss_weight > 0 with it")
        if self.item_loss_weight and (config["layout"] != "item_causal" or config["code_head"] != "parallel"):
            raise ValueError(
                "item_loss_weight > 0 needs layout 'item_causal' with code_head 'parallel' (one softmax over every "
                f"item's summed code logits), got layout {config['layout']!r}, code_head {config['code_head']!r}"
            )
        self.item_id_output = bool(config["item_id_output"])
        if self.item_id_output and not (
            config["item_id_input"] and config["layout"] == "item_causal" and config["code_head"] == "parallel"
        ):
            raise ValueError(
                "item_id_output scores every item by its item-ID embedding beside its code logits: it needs "
                "item_id_input: True, layout 'item_causal' and code_head 'parallel', got "
                f"{config['item_id_input']!r}, {config['layout']!r}, {config['code_head']!r}"
            )
        self.code_output = config["code_output"] is not False  # None (an older config): True
        if not self.code_output and not (self.item_id_output and self.item_loss_weight):
            raise ValueError(
                "code_output: False ranks items by their item-ID embedding alone, trained by the item-level loss: "
                f"set item_id_output: True and item_loss_weight > 0 with it, got {config['item_id_output']!r} and "
                f"{self.item_loss_weight}"
            )
        self.code_input = config["code_input"] is not False  # None (an older config): True
        if not self.code_input and not (config["item_id_input"] and config["layout"] == "item_causal"):
            raise ValueError(
                "code_input: False leaves the item-ID embedding as a history item's only input: it needs "
                f"item_id_input: True and layout 'item_causal', got {config['item_id_input']!r}, {config['layout']!r}"
            )
        self.code_input_dropout = config["code_input_dropout"] or 0.0
        if not 0 <= self.code_input_dropout < 1:
            raise ValueError(f"code_input_dropout must be in [0, 1), got {self.code_input_dropout}")
        if self.code_input_dropout and not (self.code_input and config["layout"] == "item_causal"):
            raise ValueError(
                "code_input_dropout drops the code digits of history items in the item-causal layout: it needs "
                f"code_input: True and layout 'item_causal', got {config['code_input']!r}, {config['layout']!r}"
            )
        self.initializer_range = config["initializer_range"]

        self.artifact = self.load_artifact(config, dataset)
        item_codes = torch.from_numpy(self.artifact.codes)  # [item_num, L], row 0 all -1
        self.code_index = CodeIndex(item_codes)
        self.register_buffer("item_codes", item_codes, persistent=False)
        # saved with the weights: a checkpoint names the codes it was trained on (see load_state_dict)
        self.register_buffer(
            "artifact_sha256", torch.tensor(list(bytes.fromhex(self.artifact.digest)), dtype=torch.uint8)
        )
        if self.layout == "seq2seq":
            self.seq2seq = CodeSeq2Seq.from_config(self.code_index.codebook_sizes, self.max_seq_length, config)
            self.state_size = config["d_model"]
        else:
            self.build_item_causal(config)
        self.apply(self._init_weights)

    def build_item_causal(self, config):
        """The item-causal layout's modules: code embeddings, the causal sequence encoder, the code head."""
        sizes = self.code_index.codebook_sizes
        self.code_embedding = (
            nn.Embedding(1 + sum(sizes), config["hidden_size"], padding_idx=0) if self.code_input else None
        )
        code_starts = 1 + torch.tensor([0] + sizes[:-1]).cumsum(0)
        self.register_buffer("code_starts", code_starts, persistent=False)  # [L], token 0 = padding
        self.sequence_encoder = self.build_sequence_encoder(config, item_embedding=config["item_id_input"])
        self.code_head = CodeHead(sizes, config["hidden_size"], config["code_head"])
        self.state_size = config["hidden_size"]

    def build_sequence_encoder(self, config, item_embedding):
        """A `SequenceEncoder` of the configured size (SASRec's option names, as in PRORecTokenizer.yaml)."""
        return SequenceEncoder(
            self.n_items,
            self.max_seq_length,
            config["hidden_size"],
            config["n_layers"],
            config["n_heads"],
            config["inner_size"],
            config["hidden_dropout_prob"],
            config["attn_dropout_prob"],
            config["hidden_act"],
            config["layer_norm_eps"],
            item_embedding=item_embedding,
        )

    def load_artifact(self, config, dataset):
        """The item-code artifact at `tokenizer_artifact`; when unset, TIGER's RQ-VAE semantic IDs (cached).

        A subclass with a `stage_one_model` (PRORec, SemConv) has no such fallback: its codes come from that model.
        """
        stage_one = getattr(self, "stage_one_model", None)
        if stage_one and not config["tokenizer_artifact"]:
            raise ValueError(
                f"{type(self).__name__} reads its item codes from config['tokenizer_artifact'] (a {stage_one} "
                f"artifact path prefix): run it through recbole_prorec.quick_start.run, which trains {stage_one} "
                "first, or set tokenizer_artifact"
            )
        self.artifact_path = config["tokenizer_artifact"] or build_semantic_artifact(dataset, config)
        return ItemCodeArtifact.load(self.artifact_path, dataset)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Refuse weights trained on other item codes than this model's artifact (a rebuilt or replaced cache).

        The item codes are not part of the weights (they come from `tokenizer_artifact`); the checkpoint's
        `artifact_sha256` says which codes the weights belong to. Checkpoints older than that buffer load with a
        warning that their codes cannot be verified.
        """
        saved = state_dict.get("artifact_sha256")
        if saved is None:
            logger.warning(
                "checkpoint has no artifact_sha256 (saved before it was recorded): its item codes are not "
                "verified against %s",
                self.artifact_path,
            )
            state_dict = {**state_dict, "artifact_sha256": self.artifact_sha256}
        elif not torch.equal(saved.to(self.artifact_sha256.device), self.artifact_sha256):
            raise ValueError(
                f"checkpoint was trained on item codes with sha256 {bytes(saved.tolist()).hex()[:16]}..., but the "
                f"artifact {self.artifact_path} has {self.artifact.digest[:16]}...: point tokenizer_artifact at the "
                "artifact it was trained with (a rebuilt artifact may assign other codes)"
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def on_training_end(self, dataset):
        """Which artifact this model generated over (path prefix, arrays digest) and its code statistics."""
        stats = {k: v for k, v in self.artifact.stats.items() if k != "loss_history"}
        return {"codes_from": str(self.artifact_path), "sha256": self.artifact.digest, "stats": stats}

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def autocast(self):
        """bfloat16 autocast when `bf16` resolved to on (recbole_prorec/precision.py says where it pays off)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def history_codes(self, interaction):
        """Codes of the interaction's history items."""
        return self.item_codes[interaction[self.ITEM_SEQ]]  # [B, T, L], padding items all -1

    def sequence_states(self, item_seq):
        """Item-causal layout: `item_seq [B, T]` -> the state of every position `[B, T, d]`."""
        if not self.code_input:
            return self.sequence_encoder(item_seq)
        codes = self.item_codes[item_seq]  # [B, T, L]
        tokens = (codes + self.code_starts).masked_fill(codes < 0, 0)
        code_vectors = self.code_embedding(tokens)  # [B, T, L, d]
        if self.code_input_dropout:  # whole digits dropped in training (one mask entry per digit), the rest rescaled
            digit_mask = code_vectors.new_ones(*codes.shape, 1)
            code_vectors = code_vectors * F.dropout(digit_mask, self.code_input_dropout, self.training)
        return self.sequence_encoder(item_seq, code_vectors.sum(2))

    def last_states(self, interaction):
        """Item-causal layout: the state after each history's last item `[B, d]`."""
        states = self.sequence_states(interaction[self.ITEM_SEQ])  # [B, T, d]
        return self.gather_indexes(states, interaction[self.ITEM_SEQ_LEN] - 1)

    def generation_step(self, interaction):
        """The batch's teacher-forced `GenerationStep` (every position of every window, or one per sample)."""
        item_seq, target_items = interaction[self.ITEM_SEQ], interaction[self.POS_ITEM_ID]
        if self.layout == "seq2seq":
            output = self.seq2seq(
                self.history_codes(interaction), self.item_codes[target_items], interaction[self.USER_ID]
            )
            log_probs = self.seq2seq.code_log_probs(output.logits, self.item_codes[target_items])
            # decoder position 0 has read only BOS: it predicts the target without having seen its codes
            return GenerationStep(log_probs, target_items, output.decoder_hidden[:, 0], output.memory_mean, item_seq)
        states = self.sequence_states(item_seq)  # [B, T, d]
        targets = next_items(item_seq, interaction[self.ITEM_SEQ_LEN], target_items)  # [B, T]
        predicted = targets > 0
        state = states[predicted]  # [N, d]
        target_items = targets[predicted]  # [N]
        log_probs, level_log_probs = self.code_head.teacher_forced(state, self.item_codes[target_items])
        history = visible_history(item_seq)[predicted]
        return GenerationStep(log_probs, target_items, state, state, history, level_log_probs)

    def generation_loss(self, step):
        """`code_loss_weight` x per-level code cross-entropy + `item_loss_weight` x cross-entropy of the target among
        every item, for a `GenerationStep`."""
        return self.code_and_item_loss(step.target_state, step.target_items, step.code_log_probs)

    def code_and_item_loss(self, state, items, code_log_probs):
        """`code_loss_weight` x per-level code cross-entropy (`code_log_probs [N, L]`) + `item_loss_weight` x
        cross-entropy of the target `items [N]` among every item, from the states `[N, d]` that predict them."""
        loss = -self.code_loss_weight * code_log_probs.mean()
        if self.item_loss_weight:
            # over the real items only (item i is class i - 1): label smoothing gives every class mass, and the
            # padding item would need masking, an extra copy of the largest tensor of the step
            logits = 0
            if self.code_output:
                logits = self.code_head.item_logits(state, self.item_codes[1:]).float()  # [N, item_num - 1]
            if self.item_id_output:
                logits = logits + self.item_id_scores(state, rows=slice(1, None)).float()
            item_ce = F.cross_entropy(logits, items - 1, label_smoothing=self.item_label_smoothing)
            loss = loss + self.item_loss_weight * item_ce
        return loss

    def item_id_scores(self, state, items=None, rows=slice(None)):
        """`item_id_output`: `state [N, d]` dotted with the item-ID embeddings the history reads (tied, as in
        SASRec): `[N]` for one item per state `items [N]`, else `[N, n]` for the table's `rows`."""
        table = self.sequence_encoder.item_embedding.weight
        if items is not None:
            return (state * table[items]).sum(-1)
        return F.linear(state, table[rows])

    def calculate_loss(self, interaction):
        with self.autocast():
            return self.generation_loss(self.generation_step(interaction))

    def predict(self, interaction):
        target_items = interaction[self.ITEM_ID]
        codes = self.item_codes[target_items]
        if self.layout == "seq2seq":
            with self.autocast():
                output = self.seq2seq(self.history_codes(interaction), codes, interaction[self.USER_ID])
                return self.seq2seq.code_log_probs(output.logits, codes).sum(-1)  # [B]
        with self.autocast():
            state = self.last_states(interaction).float()  # [B, d], float32 as full_sort_predict
        scores = self.code_head.code_log_probs(state, codes).sum(-1) if self.code_output else 0  # [B]
        return scores + self.item_id_scores(state, target_items) if self.item_id_output else scores

    def full_sort_predict(self, interaction):
        """`[B, n_items]` scores. The item-causal code head scores in float32 (from the state, which may come from
        bf16 layers): bf16 logits round so coarsely that many items of a long catalogue tie."""
        if self.layout == "seq2seq":
            with self.autocast():
                items, scores = self.seq2seq.beam_search(
                    self.history_codes(interaction), self.code_index, self.beam_size, interaction[self.USER_ID]
                )
        else:
            with self.autocast():
                state = self.last_states(interaction).float()  # [B, d]
            if not self.code_head.autoregressive:
                if not self.code_output:
                    scores = self.item_id_scores(state)  # [B, n_items]
                    scores[:, 0] = -torch.inf  # padding
                    return scores
                scores = self.code_head.all_item_scores(state, self.item_codes)  # [B, n_items], padding -inf
                return scores.add_(self.item_id_scores(state)) if self.item_id_output else scores
            items, scores = self.head_beam_search(state)
        all_scores = scores.new_full((scores.shape[0], self.n_items), -torch.inf)  # [B, n_items]
        return all_scores.scatter_(1, items, scores)

    def head_beam_search(self, state):
        """Constrained beam search with the autoregressive code head from states `[B, d]`."""

        def step_log_probs(prefix, parent):  # prefix [B, W, t] -> [B, W, K_t]
            return self.code_head.level_log_probs(
                state.unsqueeze(1).expand(-1, prefix.shape[1], -1), prefix, prefix.shape[-1]
            )

        return constrained_beam_search(step_log_probs, self.code_index, state.shape[0], self.beam_size, state.device)
