r"""
PRORecTokenizer
################################################

Stage 1 of PRORec: a sequential recommender whose item embeddings absorb the items' text semantics, and
whose fused item embeddings are quantized into item codes for the generative stage.

Reference:
    Longtao Xiao et al. "Progressive Collaborative and Semantic Knowledge Fusion for Generative
    Recommendation." arXiv:2502.06269, 2025 (published as UNGER, ACM TOIS 2025).

The paper's collaborative encoder is DIN; here it is SASRec (Kang and McAuley, ICDM 2018), which this
class extends, so encoder, ``predict`` and ``full_sort_predict`` are RecBole's own SASRec.
"""

import json
import logging

import torch
import torch.nn.functional as F
import yaml
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import nn

from recbole_prorec.quantization import ItemCodeArtifact, quantize
from recbole_prorec.semantic import semantic_embeddings
from recbole_prorec.utils import PROPERTIES_DIR, cache_dir, data_fingerprint, settings_digest

logger = logging.getLogger(__name__)

ADAPTATIONS = ("adaln", "layernorm", "mlp")
CODE_SOURCES = ("integrated", "collaborative", "semantic", "concat")
ALIGN_ITEMS = ("target", "all")
# Part of every artifact's settings (and so of its cache key): raise it when a code change alters the codes that
# the same settings produce, so that no stale cached artifact is reused. 2: AdaLN conditioned per item.
ARTIFACT_REVISION = 2
# SASRec's sequence encoder, carried in the artifact so that stage 2 can start from it (PRORec's warm_start).
SEQUENCE_ENCODER_MODULES = ("item_embedding", "position_embedding", "LayerNorm", "trm_encoder")
# Run options that shape the embeddings, recorded in the artifact (with every option of our YAML).
_RUN_KEYS = (
    "dataset",
    "text_fields",
    "seed",
    "epochs",
    "train_batch_size",
    "learner",
    "learning_rate",
    "weight_decay",
    "MAX_ITEM_LIST_LENGTH",
    "valid_metric",
    "stopping_step",
)


def _symmetric_cross_entropy(logits):
    """Mean of the row-wise and column-wise CE of a square logit matrix whose diagonal holds the positives."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def symmetric_info_nce(anchors, positives, temperature):
    """CLIP-style InfoNCE between row-paired embeddings, other rows as negatives, both directions averaged.

    ``L = (CE(S, I) + CE(S^T, I)) / 2`` with ``S[i, j] = cos(anchors[i], positives[j]) / temperature``.
    Cosine (not dot product) keeps the loss from being lowered by inflating norms, which would also
    distort the norms the next-item logits use.
    """
    anchors = F.normalize(anchors, dim=-1)  # [N, d]
    positives = F.normalize(positives, dim=-1)  # [N, d]
    return _symmetric_cross_entropy(anchors @ positives.T / temperature)


def anchor_conditioned_info_nce(anchors, normalized, scale, shift, temperature, eps=1e-12):
    """Symmetric InfoNCE where every candidate of a row is modulated by that row's (the anchor's) condition.

    ``S[i, j] = cos(anchors[i], normalized[j] * scale[i] + shift[i]) / temperature``: candidate j's text,
    adapted under anchor i's AdaLN condition. Computed without the ``[N, N, d]`` tensor:
    ``<a_i, n_j * s_i + b_i> = (a_i * s_i) . n_j + a_i . b_i`` and
    ``|n_j * s_i + b_i|^2 = s_i^2 . n_j^2 + 2 (s_i * b_i) . n_j + |b_i|^2``.
    """
    anchors = F.normalize(anchors, dim=-1)  # [N, d]
    dot = (anchors * scale) @ normalized.T + (anchors * shift).sum(-1, keepdim=True)  # [N, N]
    squared_norm = (
        scale.square() @ normalized.square().T
        + 2 * (scale * shift) @ normalized.T
        + shift.square().sum(-1, keepdim=True)
    )  # [N, N]
    return _symmetric_cross_entropy(dot / squared_norm.clamp_min(eps).sqrt() / temperature)


class AdaptiveLayerNorm(nn.Module):
    """``h = LN(x) * (1 + gamma(c)) + beta(c)``; LN without its own affine, gamma and beta linear in ``c``.

    gamma and beta start at zero (adaLN-Zero, as in DiT), so training starts from a plain LayerNorm.
    """

    def __init__(self, hidden_size, condition_size, eps):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=eps, elementwise_affine=False)
        self.gamma = nn.Linear(condition_size, hidden_size)
        self.beta = nn.Linear(condition_size, hidden_size)
        for layer in (self.gamma, self.beta):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def parts(self, x, condition):  # x [N, d], condition [N, c] -> LN(x), scale, shift [N, d] each
        """``(LN(x), 1 + gamma(c), beta(c))``, the terms of the output, for losses that pair rows differently."""
        return self.norm(x), 1 + self.gamma(condition), self.beta(condition)

    def forward(self, x, condition):  # x [N, d], condition [N, c]
        normalized, scale, shift = self.parts(x, condition)
        return normalized * scale + shift


class ModalityAdapter(nn.Module):
    """A(E_S): maps frozen semantic embeddings into the collaborative space.

    ``adaptation``: ``adaln`` = MLP then AdaptiveLayerNorm conditioned per item (see PRORecTokenizer);
    ``layernorm`` = MLP then a plain LayerNorm with a learned affine (normalising without conditioning);
    ``mlp`` = the MLP alone. The last two are the ablations separating conditioning from normalising.
    """

    def __init__(self, semantic_size, hidden_size, inner_size, dropout, adaptation, eps):
        super().__init__()
        if adaptation not in ADAPTATIONS:
            raise ValueError(f"adaptation must be one of {ADAPTATIONS}, got {adaptation!r}")
        self.adaptation = adaptation
        self.mlp = nn.Sequential(
            nn.Linear(semantic_size, inner_size), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner_size, hidden_size)
        )
        if adaptation == "adaln":
            self.norm = AdaptiveLayerNorm(hidden_size, hidden_size, eps)
        elif adaptation == "layernorm":
            self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def adaln_parts(self, semantic, condition):
        """AdaLN's ``(LN(MLP(E_S)), scale, shift)`` (see AdaptiveLayerNorm.parts); ``adaptation: adaln`` only."""
        return self.norm.parts(self.mlp(semantic), condition)

    def forward(self, semantic, condition=None):  # semantic [N, d_s], condition [N, d] (adaln only) -> [N, d]
        hidden = self.mlp(semantic)
        if self.adaptation == "adaln":
            return self.norm(hidden, condition)
        if self.adaptation == "layernorm":
            return self.norm(hidden)
        return hidden


class PRORecTokenizer(SASRec):
    r"""SASRec over collaborative item embeddings E_C, aligned with adapted semantic embeddings A(E_S).

    Loss: ``CE(seq_output @ E_C^T, target) + align_weight * InfoNCE(E_C[I], A(E_S[I]))`` where ``I`` is the
    deduplicated set of the batch's target items (``align_items: target``) or target and history items
    (``all``); the other items of ``I`` are the negatives. Gradients of the alignment reach both E_C
    (semantics flow into the collaborative embeddings) and the adapter.

    AdaLN (``adaptation: adaln``) conditions each item on its own collaborative embedding, detached:
    ``A(E_S[i] | c_i) = LN(MLP(E_S[i])) * (1 + gamma(c_i)) + beta(c_i)`` with ``c_i = sg(E_C[i])``, so the
    adapter can map the same kind of text differently in different regions of the collaborative space. The
    paper names an AdaLN in its modality adaptation layer but not its condition; the per-item collaborative
    embedding is the reading under which the layer conditions at all (a global statistic would make it a
    LayerNorm with a learned affine, the ``layernorm`` ablation).

    Copying guard: with ``c_i = E_C[i]``, ``beta`` could learn the identity and meet the alignment with no
    text at all. So the alignment never conditions a candidate on its own embedding: in row i of the InfoNCE
    logits, every candidate's text E_S[j] is adapted under the *anchor's* condition c_i
    (``anchor_conditioned_info_nce``). Whatever the condition carries about item i then reaches the true
    candidate and the in-batch negatives alike, and only the text can tell them apart; a copy through
    ``beta`` only adds a row constant (the same for every column of a row), which no direction of the
    softmax can turn into a preference for the diagonal. Codes use ``A(E_S[i] | c_i)``.

    Item embeddings for codes (``code_source``): ``integrated`` = ``(E_C/|E_C| + A(E_S)/|A(E_S)|) / 2``,
    both modalities with equal weight on the unit sphere; ``collaborative`` = E_C (already carrying the
    aligned semantics); ``semantic`` = E_S (TIGER's input); ``concat`` = ``[E_C; E_S]`` unnormalized, the naive
    fusion whose d_s unit-norm semantic dimensions (384 for MiniLM) dominate d small collaborative ones.
    """

    @classmethod
    def default_artifact_path(cls, config):
        """`<cache_dir>/artifacts/<dataset>-<model>-<hash of the settings that shape the codes>`.

        PRORec's stage chaining looks here too, so a standalone tokenizer run and PRORec's stage 1 with the same
        settings share one artifact.
        """
        digest = settings_digest(_artifact_config(config, cls.__name__))
        return str(cache_dir(config) / "artifacts" / f"{config['dataset']}-{cls.__name__}-{digest}")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if self.loss_type != "CE":
            raise ValueError(
                f"PRORecTokenizer trains with loss_type 'CE' (softmax over all items), got {self.loss_type!r}"
            )
        self.align_weight = config["align_weight"]
        self.align_temperature = config["align_temperature"]
        self.align_items = config["align_items"]
        self.code_source = config["code_source"]
        if self.align_items not in ALIGN_ITEMS:
            raise ValueError(f"align_items must be one of {ALIGN_ITEMS}, got {self.align_items!r}")
        if self.code_source not in CODE_SOURCES:
            raise ValueError(f"code_source must be one of {CODE_SOURCES}, got {self.code_source!r}")
        if self.align_temperature <= 0:
            raise ValueError(f"align_temperature must be > 0, got {self.align_temperature}")
        self.artifact_config = _artifact_config(config, type(self).__name__)
        # Set by quick_start.run, the one entry point that calls on_training_end (which writes the codes):
        # training through any other loop fails at its first step instead of ending without codes.
        self.codes_written_at_training_end = False
        self.artifact_path = config["artifact_path"] or self.default_artifact_path(config)

        # Frozen E_S, kept in the checkpoint so a saved model records exactly the text embeddings it saw.
        self.register_buffer("semantic_embedding", semantic_embeddings(dataset, config))  # [n_items, d_s]
        self.adapter = ModalityAdapter(
            self.semantic_embedding.shape[1],
            self.hidden_size,
            config["adapter_hidden_size"],
            config["adapter_dropout"],
            config["adaptation"],
            self.layer_norm_eps,
        )
        self.check_code_width()

    def check_code_width(self):
        """Product quantization cuts the embedding into `code_levels` slices: refuse, before training, a width it
        cannot cut (the error would otherwise come only when training ends)."""
        options = self.artifact_config
        if options.get("quantizer") != "pq":  # SemConvTokenizer has its own quantizer
            return
        semantic = self.semantic_embedding.shape[1]
        widths = {"integrated": self.hidden_size, "collaborative": self.hidden_size, "semantic": semantic}
        width = widths.get(self.code_source, self.hidden_size + semantic)
        if not 1 <= options["code_levels"] <= width:
            raise ValueError(
                f"quantizer 'pq' cuts the {self.code_source} embeddings ({width} wide) into code_levels="
                f"{options['code_levels']} digits: set code_levels between 1 and {width}"
            )

    def adapted_semantic(self, items=None):
        """A(E_S[items] | E_C[items]) ``[N, d]``; all items when ``items`` is None."""
        items = torch.arange(self.n_items, device=self.semantic_embedding.device) if items is None else items
        condition = self.item_embedding(items).detach() if self.adapter.adaptation == "adaln" else None
        return self.adapter(self.semantic_embedding[items], condition)

    def alignment_loss(self, items):
        """InfoNCE between E_C[items] and their adapted text; under AdaLN, row i conditions on E_C[i] only."""
        collaborative = self.item_embedding(items)  # [N, d]
        if self.adapter.adaptation != "adaln":
            return symmetric_info_nce(collaborative, self.adapted_semantic(items), self.align_temperature)
        parts = self.adapter.adaln_parts(self.semantic_embedding[items], collaborative.detach())  # 3 x [N, d]
        return anchor_conditioned_info_nce(collaborative, *parts, self.align_temperature)

    def calculate_loss(self, interaction):
        if not self.codes_written_at_training_end:
            raise RuntimeError(
                f"{type(self).__name__} writes its item codes when training ends, which RecBole's own Trainer and "
                "run_recbole never call: train it with `python run_recbole_prorec.py --model="
                f"{type(self).__name__} ...` (recbole_prorec.quick_start.run), which does"
            )
        item_seq = interaction[self.ITEM_SEQ]  # [B, T]
        seq_output = self.forward(item_seq, interaction[self.ITEM_SEQ_LEN])  # [B, d]
        pos_items = interaction[self.POS_ITEM_ID]  # [B]
        logits = seq_output @ self.item_embedding.weight.T  # [B, n_items]
        rec_loss = self.loss_fct(logits, pos_items)

        items = pos_items if self.align_items == "target" else torch.cat([pos_items, item_seq.flatten()])
        items = torch.unique(items[items > 0])  # [N]
        return rec_loss, self.align_weight * self.alignment_loss(items)

    @torch.no_grad()
    def code_embeddings(self, code_source=None):
        """Item embeddings ``[n_items, d']`` to quantize (row 0, padding, zeros); see the class docstring."""
        code_source = code_source or self.code_source
        if code_source not in CODE_SOURCES:
            raise ValueError(f"code_source must be one of {CODE_SOURCES}, got {code_source!r}")
        was_training = self.training
        self.eval()
        collaborative = self.item_embedding.weight  # [n_items, d]
        if code_source == "collaborative":
            embeddings = collaborative
        elif code_source == "semantic":
            embeddings = self.semantic_embedding
        elif code_source == "concat":
            embeddings = torch.cat([collaborative, self.semantic_embedding], dim=1)
        else:
            embeddings = (F.normalize(collaborative, dim=1) + F.normalize(self.adapted_semantic(), dim=1)) / 2
        self.train(was_training)
        embeddings = embeddings.detach().float().cpu().clone()
        embeddings[0] = 0
        return embeddings

    def quantize(self, embeddings):
        """Codes of `embeddings [n, d']` (no padding row) with this tokenizer's quantizer options."""
        options = self.artifact_config
        return quantize(
            embeddings,
            method=options["quantizer"],
            levels=options["code_levels"],
            codebook_size=options["codebook_size"],
            seed=options["seed"],
            balanced=options["balanced"],
            rqvae_kwargs=options["rqvae_kwargs"],
        )

    def sequence_encoder_state(self):
        """The SASRec encoder's weights (item and position embeddings, input LayerNorm, transformer) as arrays."""
        return {
            name: tensor.detach().float().cpu().numpy()
            for name, tensor in self.state_dict().items()
            if name.split(".")[0] in SEQUENCE_ENCODER_MODULES
        }

    @torch.no_grad()
    def on_training_end(self, dataset):
        """Quantize the ``code_source`` embeddings and write the item-code artifact; ``{"path", "stats"}``."""
        options = self.artifact_config
        embeddings = self.code_embeddings()  # [n_items, d']
        result = self.quantize(embeddings[1:])
        artifact = ItemCodeArtifact.from_quantization(
            result,
            dataset.field2id_token[dataset.iid_field],
            embeddings.numpy(),
            config=options,
            encoder=self.sequence_encoder_state(),
        )
        path = artifact.save(self.artifact_path)
        logger.info(
            "item-code artifact %s: %d items, %s codes from %s embeddings %s, collision rate %.4f before the "
            "collision level",
            path,
            embeddings.shape[0] - 1,
            options["quantizer"],
            self.code_source,
            tuple(embeddings.shape),
            result.stats["collision_rate_before"],
        )
        return {"path": str(path), "stats": artifact.stats}


def _artifact_config(config, model_name):
    """Every option of the model's YAML plus the run options, as JSON-ready values (artifact provenance)."""
    with open(PROPERTIES_DIR / "model" / f"{model_name}.yaml", encoding="utf-8") as f:
        keys = list(yaml.safe_load(f)) + list(_RUN_KEYS)
    options = {"model": model_name, "revision": ARTIFACT_REVISION, "data_sha256": data_fingerprint(config)}
    for key in keys:
        if key != "artifact_path":
            options[key] = json.loads(json.dumps(config[key], default=str))
    return options
