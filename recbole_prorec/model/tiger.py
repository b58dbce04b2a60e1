"""TIGER: generative retrieval over semantic IDs, as a RecBole sequential recommender.

Reference:
    Shashank Rajput et al. "Recommender Systems with Generative Retrieval." in NeurIPS 2023.

Items are code tuples from an `ItemCodeArtifact` (`tokenizer_artifact`); for TIGER itself those are RQ-VAE
codes of the items' text embeddings, built and cached by `build_semantic_artifact`. An encoder-decoder
(`CodeSeq2Seq`) maps the codes of the last `MAX_ITEM_LIST_LENGTH` items to the next item's codes; ranking is a
constrained beam search whose items get their beam log-probabilities, every other item -inf, so RecBole's
full-ranking metrics apply unchanged.
"""

import hashlib
import logging

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_prorec.model.beam_search import CodeIndex
from recbole_prorec.model.seq2seq import CodeSeq2Seq
from recbole_prorec.quantization import ItemCodeArtifact, quantize
from recbole_prorec.semantic import semantic_embeddings
from recbole_prorec.utils import cache_dir, settings_digest

logger = logging.getLogger(__name__)


def semantic_artifact_settings(dataset, config):
    """Everything that decides TIGER's RQ-VAE codes, as a JSON-ready dict (the cache key)."""
    item_tokens = "\n".join(str(t) for t in dataset.field2id_token[dataset.iid_field])
    return {
        "dataset": config["dataset"],
        "items_sha1": hashlib.sha1(item_tokens.encode()).hexdigest(),
        "text_fields": list(config["text_fields"] or []),
        "semantic_model": config["semantic_model"],
        "method": "rqvae",
        "levels": config["rqvae_levels"],
        "codebook_size": config["rqvae_codebook_size"],
        "rqvae_kwargs": dict(config["rqvae_kwargs"] or {}),
        "seed": config["seed"],
    }


def build_semantic_artifact(dataset, config):
    """TIGER's item codes: RQ-VAE over the items' semantic embeddings, cached; returns the artifact path prefix.

    The artifact lives under `cache_dir(config)/artifacts/` named by dataset and a hash of
    `semantic_artifact_settings`, so a second run (or a run with only training options changed) reuses it.
    Its `embeddings` are the semantic embeddings that were quantized.
    """
    settings = semantic_artifact_settings(dataset, config)
    path = cache_dir(config) / "artifacts" / f"{config['dataset']}-TIGER-rqvae-{settings_digest(settings)}"
    if path.with_name(path.name + ".npz").is_file() and path.with_name(path.name + ".json").is_file():
        logger.info(f"Reusing TIGER's semantic-ID artifact {path}")
        return str(path)
    logger.info(f"Building TIGER's semantic-ID artifact {path} (RQ-VAE over semantic embeddings)")
    embeddings = semantic_embeddings(dataset, config)  # [item_num, d], row 0 = pad
    result = quantize(
        embeddings[1:],
        method="rqvae",
        levels=settings["levels"],
        codebook_size=settings["codebook_size"],
        seed=settings["seed"],
        rqvae_kwargs=settings["rqvae_kwargs"],
    )
    item_tokens = dataset.field2id_token[dataset.iid_field]
    ItemCodeArtifact.from_quantization(result, item_tokens, embeddings.numpy(), settings).save(path)
    return str(path)


class TIGER(SequentialRecommender):
    """Encoder-decoder over item codes, trained with per-level token cross-entropy, ranked by beam search.

    `full_sort_predict` scores the `beam_size` generated items by their beam log-probabilities and every
    other item -inf; `predict` scores given items by the teacher-forced log-probability of their code tuple
    (the same quantity, so both rankings agree on the items beam search finds).
    """

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.beam_size = config["beam_size"]
        largest_topk = max(config["topk"]) if config["topk"] else 0
        if self.beam_size < largest_topk:
            raise ValueError(
                f"beam_size ({self.beam_size}) must be >= the largest topk ({largest_topk}): beam search returns "
                f"beam_size items per user and every other item scores -inf; set beam_size >= {largest_topk}"
            )
        self.bf16 = config["bf16"]
        self.initializer_range = config["initializer_range"]

        self.artifact = self.load_artifact(config, dataset)
        item_codes = torch.from_numpy(self.artifact.codes)  # [item_num, L], row 0 all -1
        self.code_index = CodeIndex(item_codes)
        self.register_buffer("item_codes", item_codes, persistent=False)
        self.seq2seq = CodeSeq2Seq(
            self.code_index.codebook_sizes,
            self.max_seq_length,
            d_model=config["d_model"],
            n_heads=config["attention_heads"],
            encoder_layers=config["encoder_layers"],
            decoder_layers=config["decoder_layers"],
            d_ff=config["d_ff"],
            dropout=config["dropout"],
            history_tokens=config["history_tokens"],
            num_user_buckets=config["n_user_buckets"],
        )
        self.apply(self._init_weights)

    def load_artifact(self, config, dataset):
        """The item-code artifact at `tokenizer_artifact`; when unset, TIGER's RQ-VAE semantic IDs (cached)."""
        path = config["tokenizer_artifact"] or build_semantic_artifact(dataset, config)
        return ItemCodeArtifact.load(path, dataset)

    def on_training_end(self, dataset):
        """The code statistics of the artifact this model generated over, reported with the run's results."""
        return {"stats": {k: v for k, v in self.artifact.stats.items() if k != "loss_history"}}

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def autocast(self):
        """bfloat16 autocast when `bf16` is set (AVX-512 BF16 CPUs: training ~1.6x, beam search ~1.4x faster)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def history_codes(self, interaction):
        """Codes of the interaction's history items."""
        return self.item_codes[interaction[self.ITEM_SEQ]]  # [B, T, L], padding items all -1

    def forward(self, interaction, target_items):
        """Teacher-forced `Seq2SeqOutput` for the interaction's histories and `target_items [B]`."""
        return self.seq2seq(self.history_codes(interaction), self.item_codes[target_items], interaction[self.USER_ID])

    def calculate_loss(self, interaction):
        target_items = interaction[self.POS_ITEM_ID]
        with self.autocast():
            output = self.forward(interaction, target_items)
        return self.code_loss(output, target_items)

    def code_loss(self, output, target_items):
        """Token cross-entropy, averaged over the batch and the L levels."""
        return -self.seq2seq.code_log_probs(output.logits, self.item_codes[target_items]).mean()

    def predict(self, interaction):
        target_items = interaction[self.ITEM_ID]
        with self.autocast():
            output = self.forward(interaction, target_items)
        return self.seq2seq.code_log_probs(output.logits, self.item_codes[target_items]).sum(-1)  # [B]

    def full_sort_predict(self, interaction):
        with self.autocast():
            items, scores = self.seq2seq.beam_search(
                self.history_codes(interaction), self.code_index, self.beam_size, interaction[self.USER_ID]
            )
        all_scores = scores.new_full((scores.shape[0], self.n_items), -torch.inf)  # [B, n_items]
        return all_scores.scatter_(1, items, scores)
