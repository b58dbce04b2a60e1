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


def in_batch_info_nce(queries, keys, temperature):
    """InfoNCE of `queries [B, d]` against `keys [B, d]` (row b is b's positive, the other rows its negatives).

    Both sides are L2-normalised (cosine similarity). Rows whose key equals b's key (the same target item, or
    an identical history) are not counted as b's negatives: they would be false negatives. Computed in float32
    even under autocast, so that equal keys are recognised.
    """
    with torch.autocast(keys.device.type, enabled=False):
        queries, keys = F.normalize(queries.float(), dim=-1), F.normalize(keys.float(), dim=-1)
        logits = queries @ keys.T / temperature  # [B, B]
        duplicate = (keys @ keys.T > 1 - 1e-6) & ~torch.eye(len(keys), dtype=torch.bool, device=keys.device)
        return F.cross_entropy(logits.masked_fill(duplicate, -torch.inf), torch.arange(len(keys), device=keys.device))


class PRORec(TIGER):
    r"""Generative recommender over stage-1 codes, with the paper's intra-modality knowledge distillation.

    With `e_i` the artifact's integrated embedding of item i, `y_b` the target item of sequence b,
    `h_{b,l}` the decoder state that predicts level l of `y_b` (teacher-forced), `m_{b,s}` the encoder output
    at the `S_b` non-padding positions s (history tokens, and the user token when there is one), `H_b` the
    history items, `P_item`, `P_hist` linear maps from d_model to the embedding width, `tau` = `kd_temperature`:

        L = L_CE + kd_item_weight * L_item + kd_history_weight * L_hist
        L_CE   = -1/(B L) sum_b sum_l log p(c_l(y_b) | c_<l(y_b), history_b)
        L_item = NCE(q_b = P_item(1/L sum_l h_{b,l}),    k_b = e_{y_b})
        L_hist = NCE(q_b = P_hist(1/S_b sum_s m_{b,s}),  k_b = 1/|H_b| sum_{i in H_b} e_i)
        NCE(q, k) = -1/B sum_b log( exp(cos(q_b, k_b)/tau) / sum_{j: j = b or k_j != k_b} exp(cos(q_b, k_j)/tau) )

    L_item asks the states that generate the next item's codes to also predict its continuous embedding: a
    graded target (similar items are close) where the code cross-entropy only knows right or wrong codes.
    L_hist asks the encoder, which only reads codes, to keep what the history's continuous embeddings say.
    InfoNCE rather than MSE/cosine: it needs the targets only up to scale and rewards telling in-batch items
    apart, as stage 1's alignment does; unlike stage 1's symmetric InfoNCE it is one-directional (the targets
    are fixed) and skips duplicate targets as negatives (popular items recur within a batch). A weight of 0
    removes its term and its projection (ablation).
    """

    stage_one_model = "PRORecTokenizer"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.kd_item_weight = config["kd_item_weight"]
        self.kd_history_weight = config["kd_history_weight"]
        self.kd_temperature = config["kd_temperature"]
        embeddings = torch.from_numpy(self.artifact.embeddings)  # [item_num, d_e], row 0 = pad (zeros)
        self.register_buffer("integrated_embeddings", embeddings, persistent=False)
        d_model, d_embedding = config["d_model"], embeddings.shape[1]
        self.item_projection = nn.Linear(d_model, d_embedding) if self.kd_item_weight > 0 else None
        self.history_projection = nn.Linear(d_model, d_embedding) if self.kd_history_weight > 0 else None
        for projection in (self.item_projection, self.history_projection):
            if projection is not None:
                projection.apply(self._init_weights)

    def load_artifact(self, config, dataset):
        if not config["tokenizer_artifact"]:
            raise ValueError(
                "PRORec reads its item codes from config['tokenizer_artifact'] (a PRORecTokenizer artifact path "
                "prefix): run it through recbole_prorec.quick_start.run, which trains PRORecTokenizer first, "
                "or set tokenizer_artifact"
            )
        return super().load_artifact(config, dataset)

    def calculate_loss(self, interaction):
        target_items = interaction[self.POS_ITEM_ID]
        with self.autocast():
            output = self.forward(interaction, target_items)
            loss = self.code_loss(output, target_items)
            if self.item_projection is not None:
                query = self.item_projection(output.decoder_hidden.mean(1))  # [B, d_e]
                key = self.integrated_embeddings[target_items]
                loss = loss + self.kd_item_weight * in_batch_info_nce(query, key, self.kd_temperature)
            if self.history_projection is not None:
                history = interaction[self.ITEM_SEQ]  # [B, T], 0 = padding (zero embedding)
                key = self.integrated_embeddings[history].sum(1) / (history > 0).sum(1, keepdim=True)
                loss = loss + self.kd_history_weight * in_batch_info_nce(
                    self.history_projection(output.memory_mean), key, self.kd_temperature
                )
        return loss
