"""PRORec stage 2: TIGER's generative model over PRORecTokenizer's unified codes, plus intra-modality distillation.

Reference:
    Longtao Xiao et al. "UNGER: Generative Recommendation with A Unified Code via Semantic and Collaborative
    Integration." ACM TOIS 2025 (first circulated as PRORec). https://arxiv.org/abs/2502.06269

Quantization throws away part of what stage 1's integrated item embeddings know; the paper's intra-modality
knowledge distillation uses those embeddings (the artifact's `embeddings`, fixed) as soft targets while the
code generator trains, so the model's continuous states keep what the discrete codes lost.
"""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_prorec.model.tiger import TIGER


def in_batch_info_nce(queries, keys, temperature, key_ids=None):
    """InfoNCE of `queries [B, d]` against `keys [B, d]` (row b is b's positive, the other rows its negatives).

    Both sides are L2-normalised (cosine similarity). Rows whose key equals b's key (the same target item, or
    an identical history) are not counted as b's negatives: they would be false negatives. `key_ids [B]`, when
    given, says which keys are equal (the target items: an integer compare instead of a [B, B] float one).
    Computed in float32 even under autocast, so that equal keys are recognised; the temperature is folded into
    the queries, so the [B, B] logits need no division.
    """
    with torch.autocast(keys.device.type, enabled=False):
        queries = F.normalize(queries.float(), dim=-1) / temperature
        keys = F.normalize(keys.float(), dim=-1)
        logits = queries @ keys.T  # [B, B]
        duplicate = keys @ keys.T > 1 - 1e-6 if key_ids is None else key_ids.unsqueeze(1) == key_ids.unsqueeze(0)
        duplicate.fill_diagonal_(False)
        return F.cross_entropy(logits.masked_fill_(duplicate, -torch.inf), torch.arange(len(keys), device=keys.device))


FUSION_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # stage_one_fusion: auto tries each on validation


class PRORec(TIGER):
    r"""Generative recommender over stage-1 codes, with the paper's intra-modality knowledge distillation.

    With `e_i` the artifact's integrated embedding of item i, and for each predicted item n (every position of
    every window in the `item_causal` layout, one per sample in `seq2seq`): `y_n` the target item, `s_n` a state
    that predicts `y_n` without having seen any of its codes (the position's state; in `seq2seq` the decoder
    state after BOS alone), `m_n` a summary of the history (the position's state; in `seq2seq` the mean encoder
    output), `H_n` the history items it has seen, `P_item`, `P_hist` linear maps from the model width to the
    embedding width, `tau` = `kd_temperature`:

        L = L_CE + kd_item_weight * L_item + kd_history_weight * L_hist
        L_CE   = -1/(N L) sum_n sum_l log p(c_l(y_n) | c_<l(y_n), history_n)
        L_item = NCE(q_n = P_item(s_n),  k_n = e_{y_n})
        L_hist = NCE(q_n = P_hist(m_n),  k_n = 1/|H_n| sum_{i in H_n} e_i)
        NCE(q, k) = -1/N sum_n log( exp(cos(q_n, k_n)/tau) / sum_{j: j = n or k_j != k_n} exp(cos(q_n, k_j)/tau) )

    L_item asks the state that generates the next item's codes to also predict its continuous embedding: a
    graded target (similar items are close) where the code cross-entropy only knows right or wrong codes. The
    state must not have read the target's codes, or the loss could be met by copying them instead of
    predicting from the history. L_hist asks the history summary, built from codes, to keep what the
    history's continuous embeddings say. InfoNCE rather than MSE/cosine: it needs the targets only up to scale
    and rewards telling in-batch items apart, as stage 1's alignment does; it is one-directional (the targets
    are fixed) and skips duplicate targets as negatives (popular items recur within a batch). A weight of 0
    removes its term and its projection (ablation).

    Stage 1 beyond its codes (`item_causal` layout; the artifact carries the tokenizer's SASRec encoder):
    `warm_start` initialises the sequence encoder, item-ID embeddings included, from it (and with
    `warm_start_head` the parallel code head from a least-squares fit of stage-1 item embeddings); `stage_one_fusion`
    = w > 0 ranks by `(1 - w) * log p(codes) + w * log_softmax(stage-1 scores)` with a frozen copy of the
    stage-1 model, a score fusion that benchmarks must label as such, not as PRORec alone; `auto` chooses w on
    validation after training (`choose_on_validation`), never on test.
    """

    stage_one_model = "PRORecTokenizer"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.kd_item_weight = config["kd_item_weight"]
        self.kd_history_weight = config["kd_history_weight"]
        self.kd_temperature = config["kd_temperature"]
        fusion = config["stage_one_fusion"] or 0.0
        self.fusion_on_validation = fusion == "auto"  # quick_start.run calls choose_on_validation after training
        self.stage_one_fusion = 0.0 if self.fusion_on_validation else fusion
        embeddings = torch.from_numpy(self.artifact.embeddings)  # [item_num, d_e], row 0 = pad (zeros)
        self.register_buffer("integrated_embeddings", embeddings, persistent=False)
        d_embedding = embeddings.shape[1]
        self.item_projection = nn.Linear(self.state_size, d_embedding) if self.kd_item_weight > 0 else None
        self.history_projection = nn.Linear(self.state_size, d_embedding) if self.kd_history_weight > 0 else None
        for projection in (self.item_projection, self.history_projection):
            if projection is not None:
                projection.apply(self._init_weights)
        stage_one_options = {"warm_start": config["warm_start"], "stage_one_fusion": config["stage_one_fusion"]}
        used = [key for key, value in stage_one_options.items() if value]
        if used and self.layout != "item_causal":
            raise ValueError(
                f"{', '.join(used)} need layout 'item_causal' (the stage-1 encoder's shape), got {self.layout!r}"
            )
        if config["warm_start_head"] and not config["warm_start"]:
            raise ValueError("warm_start_head starts the code head from stage 1's item embeddings: set warm_start too")
        source = f"tokenizer_artifact {config['tokenizer_artifact']}"
        if config["warm_start"]:
            if self.sequence_encoder.item_embedding is None:
                raise ValueError("warm_start copies stage 1's item-ID embeddings too: set item_id_input: True")
            self.sequence_encoder.load_stage_one(self.artifact.encoder, source)
            if config["warm_start_head"]:
                self.code_head.start_from_item_embeddings(self.sequence_encoder.item_embedding.weight, self.item_codes)
        self.stage_one_encoder = None
        if self.fusion_on_validation or self.stage_one_fusion != 0:
            if isinstance(self.stage_one_fusion, str) or not 0 <= self.stage_one_fusion < 1:
                raise ValueError(f"stage_one_fusion must be 'auto' or in [0, 1), got {self.stage_one_fusion!r}")
            with torch.random.fork_rng():  # its random init is overwritten: training draws as without fusion
                self.stage_one_encoder = self.build_sequence_encoder(config, item_embedding=True)
            self.stage_one_encoder.load_stage_one(self.artifact.encoder, source)
            self.stage_one_encoder.requires_grad_(False)

    def calculate_loss(self, interaction):
        with self.autocast():
            step = self.generation_step(interaction)
            loss = self.generation_loss(step)
            if self.item_projection is not None:
                key = self.integrated_embeddings[step.target_items]
                loss = loss + self.kd_item_weight * in_batch_info_nce(
                    self.item_projection(step.target_state), key, self.kd_temperature, key_ids=step.target_items
                )
            if self.history_projection is not None:
                history = step.history_items  # [N, T], 0 = not seen (zero embedding)
                key = self.integrated_embeddings[history].sum(1) / (history > 0).sum(1, keepdim=True)
                loss = loss + self.kd_history_weight * in_batch_info_nce(
                    self.history_projection(step.history_state), key, self.kd_temperature
                )
        return loss

    def choose_on_validation(self, validate):
        """With `stage_one_fusion: auto`, the fusion weight with the best validation score (`validate()` -> the
        valid metric, higher is better) among `FUSION_WEIGHTS`, ties to the smaller weight; it stays set for the
        test. Returns `{"stage_one_fusion": w, "valid_scores": {w: score}}`, or None without `auto`."""
        if not self.fusion_on_validation:
            return None
        scores = {}
        for weight in FUSION_WEIGHTS:
            self.stage_one_fusion = weight
            scores[weight] = validate()
        self.stage_one_fusion = max(FUSION_WEIGHTS, key=lambda weight: (scores[weight], -weight))
        return {"stage_one_fusion": self.stage_one_fusion, "valid_scores": scores}

    def stage_one_log_probs(self, interaction):
        """The frozen stage-1 model's log-softmax over every item `[B, n_items]` (score fusion)."""
        self.stage_one_encoder.eval()
        states = self.stage_one_encoder(interaction[self.ITEM_SEQ])  # [B, T, d]
        state = self.gather_indexes(states, interaction[self.ITEM_SEQ_LEN] - 1)  # [B, d]
        return (state @ self.stage_one_encoder.item_embedding.weight.T).log_softmax(-1)

    def fuse(self, scores, stage_one):
        """`(1 - w) * log p(codes) + w * stage-1 log-probs`, w = `stage_one_fusion`."""
        return (1 - self.stage_one_fusion) * scores.float() + self.stage_one_fusion * stage_one

    def fuses(self):
        """Whether scores mix in stage 1 now (with `auto`, w is 0 while training validates: nothing to compute)."""
        return self.stage_one_encoder is not None and self.stage_one_fusion != 0

    def predict(self, interaction):
        scores = super().predict(interaction)  # [B]
        if not self.fuses():
            return scores
        stage_one = self.stage_one_log_probs(interaction).gather(1, interaction[self.ITEM_ID].unsqueeze(1))
        return self.fuse(scores, stage_one.squeeze(1))

    def full_sort_predict(self, interaction):
        scores = super().full_sort_predict(interaction)  # [B, n_items]
        if not self.fuses():
            return scores
        return self.fuse(scores, self.stage_one_log_probs(interaction))
