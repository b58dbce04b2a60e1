r"""SemConv: a pretrained language model fine-tuned to generate items written as four tokens of its own vocabulary.

Reference:
    Guanghan Li et al. "Semantic Convergence: Harmonizing Recommender Systems via Two-Stage Alignment and
    Behavioral Semantic Tokenization." AAAI 2025, arXiv:2412.13771 (no public code; this is our reading).

Stage 1 (`SemConvTokenizer`, Alignment Tokenization): PRORecTokenizer's SASRec learns collaborative item
embeddings; an RQ-VAE whose cascaded codebooks start from, and stay tied to, the language model's input token
embeddings up to a per-level scale (`quantization/token_space.py`) turns each into four codes (u, v, x, y), unique
per item.

Stage 2 (`SemConv`, Alignment Tasks): the codes become new vocabulary tokens `<a_u> <b_v> <c_x> <d_y>` whose
embeddings start at the trained code vectors; the language model is fine-tuned on a per-batch mixture of
sequential, textual and query tasks, each with sampled negatives, and ranks items by the log-probability of
their codes (TIGER's item-causal machinery: `CodeHead`, `CodeIndex`, constrained beam search). Serving
pre-caches every user's top-K like any other model (`recbole_prorec/serve/`).
"""

import logging
import string

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from recbole_prorec.model.item_causal import CodeHead, use_uniform_dropout
from recbole_prorec.model.tiger import TIGER
from recbole_prorec.model.tokenizer import PRORecTokenizer, _artifact_config
from recbole_prorec.quantization.token_space import quantize_in_token_space
from recbole_prorec.semantic import item_texts, load_language_model, read_item_fields
from recbole_prorec.utils import PROPERTIES_DIR, cache_dir, settings_digest

logger = logging.getLogger(__name__)

# The artifact's `encoder/<name>` entry holding the trained code vectors [levels, codebook_size, d_lm].
CODEBOOKS = "token_codebooks"

# TIGER.yaml options that neither SemConv nor its stage 1 reads, and why: SemConv refuses a value other than TIGER's
# default (TIGER's sequence-encoder sizes are not here: they size stage 1's SASRec, PRORecTokenizer.yaml).
_CODES = "SemConv's item codes come from SemConvTokenizer (code_levels, codebook_size, rqvae_kwargs; tokenizer_config)"
_SEQ2SEQ = "SemConv has no seq2seq layout: the language model reads the history"
_TOKEN_INPUT = "a history position is the item's language-model tokens (see item_id_input)"
UNSUPPORTED_TIGER_OPTIONS = {
    "item_id_input": "a history position is the sum of the item's language-model token embeddings, no item-ID one "
    "(stage_one_item_input adds a projection of stage 1's item embedding)",
    "item_id_output": "there is no item-ID embedding to score by (see item_id_input)",
    "code_output": "there is no item-ID embedding to score by instead of the codes (see item_id_input)",
    "code_input": _TOKEN_INPUT,
    "code_input_dropout": _TOKEN_INPUT,
    "semantic_quantizer": _CODES,
    "pq_digits": _CODES,
    "pq_codebook_size": _CODES,
    "rqvae_levels": _CODES,
    "rqvae_codebook_size": _CODES,
    **dict.fromkeys(
        [
            "d_model",
            "attention_heads",
            "encoder_layers",
            "decoder_layers",
            "d_ff",
            "dropout",
            "history_tokens",
            "n_user_buckets",
        ],
        _SEQ2SEQ,
    ),
}


def check_unsupported_options(config):
    """A ValueError naming every TIGER option in `config` that SemConv would ignore, set to other than its default."""
    defaults = yaml.safe_load((PROPERTIES_DIR / "model" / "TIGER.yaml").read_text(encoding="utf-8"))
    wrong = [
        f"{key}: {config[key]!r} (only TIGER's default {defaults.get(key)!r}; {reason})"
        for key, reason in UNSUPPORTED_TIGER_OPTIONS.items()
        if key in config and config[key] is not None and config[key] != defaults.get(key)
    ]
    if wrong:
        raise ValueError("SemConv does not support these TIGER options: " + "; ".join(wrong))


def item_token_names(codebook_sizes):
    """The new vocabulary, level-major: code k of level l is `<{letter l}_{k}>` (`<a_12>`, `<b_3>`, ...)."""
    if len(codebook_sizes) > len(string.ascii_lowercase):
        raise ValueError(f"at most {len(string.ascii_lowercase)} code levels get letters, got {len(codebook_sizes)}")
    return [f"<{string.ascii_lowercase[level]}_{k}>" for level, size in enumerate(codebook_sizes) for k in range(size)]


def ordinary_token_ids(tokenizer):
    """Ids of the vocabulary's ordinary tokens: not special, not bracketed placeholders such as BERT's [unused7]."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor(
        sorted(i for t, i in tokenizer.get_vocab().items() if i not in special and not t.startswith("["))
    )


def item_queries(dataset, category_field, brand_field, template, template_no_brand):
    """A search-style query per internal item id ("" for padding and for items without a category).

    The category is the leaf of the item's first category path (`Beauty > Makeup > Nails > Nail Polish | ...`
    -> `nail polish`), the brand the raw brand field; `template` (with `{category}` and `{brand}`) or, for items
    without a brand (or with `brand_field` None), `template_no_brand` (with `{category}`) makes the query: a
    shopper's intent that names what the item is and who makes it, not the item itself (many items answer one
    query).
    """
    fields = [category_field] + ([brand_field] if brand_field else [])
    try:
        columns = read_item_fields(dataset, fields)
    except ValueError as error:
        raise ValueError(
            f"query_category_field / query_brand_field: {error}; name columns the .item file has, or set "
            "query_weight: 0"
        ) from None
    brands = columns[brand_field] if brand_field else [""] * len(columns[category_field])
    queries = []
    for category, brand in zip(columns[category_field], brands):
        leaf = category.split("|")[0].split(">")[-1].strip().lower()
        if not leaf:
            queries.append("")
        elif brand:
            queries.append(template.format(category=leaf, brand=brand))
        else:
            queries.append(template_no_brand.format(category=leaf))
    return queries


def encode_texts(tokenizer, texts, max_tokens):
    """`[len(texts), max_tokens]` token ids with [CLS]/[SEP], right-padded with the pad id."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_tokens, padding="max_length", return_tensors="pt")
    return encoded["input_ids"]


def _semconv_artifact_config(config):
    """PRORecTokenizer's options (the SASRec encoder, its training) and SemConvTokenizer's own: the cache key."""
    return {**_artifact_config(config, "PRORecTokenizer"), **_artifact_config(config, "SemConvTokenizer")}


class SemConvTokenizer(PRORecTokenizer):
    r"""Stage 1: PRORecTokenizer's collaborative encoder, its item embeddings quantized into language-model tokens.

    Training is PRORecTokenizer's (SASRec next-item CE; its text alignment is off by default, `align_weight: 0`,
    so the codes come from the collaborative embedding E_C alone, `code_source: collaborative`). At the end,
    `quantize_in_token_space` fits an RQ-VAE on E_C whose `code_levels` cascaded codebooks live in `lm_model`'s
    token-embedding space: code vectors start at distinct token rows, times a per-level scale between the token
    and the latent space, and stay tied to a distinct row each (`tie_weight`; `lm_tied: False` starts them from
    k-means without the tie, the ablation). Collisions are repaired inside the last level, so every item has
    exactly `code_levels` tokens. The artifact carries the trained code vectors in token units
    (`encoder/token_codebooks`), from which SemConv starts its new token embeddings, and its statistics the
    codes' use per level and their distance and cosine to their token rows (`token_space.token_tie_stats`).
    """

    @classmethod
    def default_artifact_path(cls, config):
        digest = settings_digest(_semconv_artifact_config(config))
        return str(cache_dir(config) / "artifacts" / f"{config['dataset']}-{cls.__name__}-{digest}")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.artifact_config = _semconv_artifact_config(config)
        self.token_codebooks = None  # [levels, K, d_lm], set by quantize

    def quantize(self, embeddings):
        """Codes of `embeddings [n, d]` from codebooks in `lm_model`'s token space; keeps the code vectors."""
        options = self.artifact_config
        tokenizer, language_model = load_language_model(options["lm_model"])
        token_embeddings = language_model.get_input_embeddings().weight.detach()[ordinary_token_ids(tokenizer)]
        result, self.token_codebooks = quantize_in_token_space(
            embeddings,
            token_embeddings,
            levels=options["code_levels"],
            codebook_size=options["codebook_size"],
            seed=options["seed"],
            tied=options["lm_tied"],
            tie_weight=options["tie_weight"],
            rqvae_kwargs=options["rqvae_kwargs"],
        )
        return result

    def sequence_encoder_state(self):
        """PRORecTokenizer's encoder weights plus the code vectors of the last `quantize`."""
        return {**super().sequence_encoder_state(), CODEBOOKS: self.token_codebooks.float().cpu().numpy()}


class SemConv(TIGER):
    r"""Stage 2: a pretrained language model over item tokens, trained on a mixture of alignment tasks.

    Input: `[CLS] history_prompt` then one position per history item whose embedding is the sum of its four
    item-token embeddings (`<a_u> + <b_v> + <c_x> + <d_y>`), plus with `stage_one_item_input` `P e_i`, a learned
    linear map of stage 1's item embedding (the artifact's `embeddings`, E_C, fixed; what PRORec's `item_id_input`
    with `warm_start` gives a position), under a causal mask; every item position predicts the next item's codes
    through a `CodeHead` (parallel: exact scores for all items; autoregressive: constrained beam search), whose
    output vectors start at the item-token embeddings. Losses, with `c_l(i)` item i's level-l
    code, `log p(i | s) = sum_l log p_l(c_l(i) | s)` the head's item log-probability from a state s, and
    `NEG(s, i) = -log( exp(log p(i|s)) / (exp(log p(i|s)) + sum_{k=1..n_neg} exp(log p(j_k|s))) )` over
    `num_negatives` uniformly sampled items `j_k != i` (negative sampling: tell the true item from sampled ones):

        L = seq_weight * L_seq + text_weight * L_text + query_weight * L_query
        GEN(s, i) = -code_loss_weight/L sum_l log p_l(c_l(i) | s) + item_loss_weight * ITEM(s, i)
        ITEM(s, i) = -log( exp(log p(i|s)) / sum_{every item j} exp(log p(j|s)) )   (parallel head: TIGER's
                     item-level loss, `CodeHead.item_logits`; it trains the ranking evaluation reads)
        L_seq   = mean over every predicted position n of a window [GEN(s_n, y_n)] + neg_weight * mean NEG(s_n, y_n)
        L_text  = (L_t2i + L_i2t) / 2 over `aux_batch_size` distinct items I sampled uniformly per batch
        L_t2i   = mean_i GEN(t_i, i) + neg_weight * mean_i NEG(t_i, i),   t_i = meanpool LM([CLS] text_i [SEP])
        L_i2t   = -mean_i w(i, i) + neg_weight * CE_i(softmax_j w(i, j), j = i),
                  w(i, j) = mean_{word in text_j} log softmax(H(e_i) E_word^T)[word],
                  e_i = meanpool LM([CLS] item_prompt <a_u> <b_v> <c_x> <d_y> [SEP])
        L_query = mean_q GEN(q_i, i) + neg_weight * mean NEG(q_i, i),   q_i = meanpool LM([CLS] query_i [SEP])

    `text_i` is the item text of `semantic.item_texts` (`text_fields`, truncated to `text_max_tokens`); `H` a
    dense+GELU+LayerNorm transform and `E_word` the model's own (tied) embeddings of its original vocabulary, so
    item tokens -> text is a bag-of-words generation of the text, and its negatives are the other sampled items'
    texts. `query_i` comes from `item_queries` (leaf category and brand, `query_template`), over the items
    that have a category. A weight of 0 removes its task (`neg_weight: 0` every negative term, `item_loss_weight: 0`
    every ITEM term). GEN is the same in every task (`TIGER.code_and_item_loss`).
    """

    stage_one_model = "SemConvTokenizer"

    @classmethod
    def check_config(cls, config):
        """Refuse options SemConv would silently ignore (`UNSUPPORTED_TIGER_OPTIONS`); run before stage 1 trains."""
        check_unsupported_options(config)

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        if self.layout != "item_causal":
            raise ValueError(
                f"SemConv reads one position per history item: layout must be 'item_causal', got {self.layout!r}"
            )
        self.seq_weight, self.text_weight, self.query_weight = (
            config[k] for k in ("seq_weight", "text_weight", "query_weight")
        )
        if min(self.seq_weight, self.text_weight, self.query_weight) < 0 or not (
            self.seq_weight + self.text_weight + self.query_weight
        ):
            raise ValueError(
                "seq_weight, text_weight and query_weight must be >= 0 with at least one > 0, got "
                f"{self.seq_weight}, {self.text_weight}, {self.query_weight}"
            )
        self.neg_weight, self.num_negatives, self.aux_batch_size = (
            config["neg_weight"],
            config["num_negatives"],
            config["aux_batch_size"],
        )

        tokenizer, self.lm = load_language_model(config["lm_model"], pretrained=config["lm_pretrained"])

        def prompt(text):  # [CLS] + the text's tokens
            return torch.tensor([tokenizer.cls_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]])

        # Texts are tokenized before the item tokens join the vocabulary: text never turns into item tokens.
        self.register_buffer("history_prompt", prompt(config["history_prompt"]), persistent=False)  # [P]
        self.register_buffer("item_prompt", prompt(config["item_prompt"]), persistent=False)  # [P']
        self.register_buffer("special_ids", torch.tensor(tokenizer.all_special_ids), persistent=False)
        self.pad_id, self.sep_id = tokenizer.pad_token_id, tokenizer.sep_token_id
        if self.text_weight > 0:
            texts = encode_texts(tokenizer, item_texts(dataset, config["text_fields"]), config["text_max_tokens"])
            self.register_buffer("text_ids", texts, persistent=False)  # [n_items, S]
        if self.query_weight > 0:
            queries = item_queries(
                dataset,
                config["query_category_field"],
                config["query_brand_field"],
                config["query_template"],
                config["query_template_no_brand"],
            )
            query_items = torch.tensor([i for i, query in enumerate(queries) if query], dtype=torch.long)
            if query_items.numel() == 0:
                raise ValueError(
                    f"no item has a {config['query_category_field']!r} value to build queries from: set query_weight: 0"
                )
            self.register_buffer(
                "query_ids", encode_texts(tokenizer, queries, config["text_max_tokens"]), persistent=False
            )
            self.register_buffer("query_items", query_items, persistent=False)

        self.build_language_model(config, tokenizer)
        self.tokenizer = tokenizer  # with the item tokens
        d_model = self.lm.config.hidden_size
        self.state_size = d_model
        self.code_head = CodeHead(self.code_index.codebook_sizes, d_model, config["code_head"])
        self.code_head.apply(self._init_weights)
        with torch.no_grad():  # level l's logit of code k starts as state . embedding(<l_k>), an LM head's reading
            self.code_head.output.weight.copy_(self.lm.get_input_embeddings().weight[self.original_vocab_size :])
            self.code_head.output.bias.zero_()
        self.stage_one_item_projection = None
        if config["stage_one_item_input"]:
            embeddings = torch.from_numpy(self.artifact.embeddings)  # [item_num, d_e] float32, row 0 = pad (zeros)
            self.register_buffer("stage_one_item_embeddings", embeddings, persistent=False)
            self.stage_one_item_projection = nn.Linear(embeddings.shape[1], d_model)
            self.stage_one_item_projection.apply(self._init_weights)
        self.text_transform = None
        if self.text_weight > 0:
            self.text_transform = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.LayerNorm(d_model))
            self.text_transform.apply(self._init_weights)

    def build_item_causal(self, config):
        """Nothing here: SemConv builds its modules after TIGER's weight initialisation, which would overwrite the
        pretrained language model."""

    def build_language_model(self, config, tokenizer):
        """Cut the model to `lm_layers`, add one token per code (embeddings from the artifact's code vectors)."""
        layers = self.lm.encoder.layer
        if config["lm_layers"]:
            if not 0 < config["lm_layers"] <= len(layers):
                raise ValueError(
                    f"lm_layers must be in [1, {len(layers)}] for {config['lm_model']}, got {config['lm_layers']}"
                )
            self.lm.encoder.layer = layers[: config["lm_layers"]]
            self.lm.config.num_hidden_layers = config["lm_layers"]
        self.lm.pooler = None  # states are mean-pooled or read per position; the [CLS] pooler is unused
        use_uniform_dropout(self.lm)
        sizes = self.code_index.codebook_sizes
        codebooks = self.artifact.encoder.get(CODEBOOKS)
        d_model = self.lm.config.hidden_size
        if codebooks is None or codebooks.shape[2] != d_model or any(k > codebooks.shape[1] for k in sizes):
            shape = None if codebooks is None else tuple(codebooks.shape)
            raise ValueError(
                f"tokenizer_artifact {self.artifact_path} has code vectors {CODEBOOKS} of shape {shape}, expected "
                f"[{len(sizes)}, >= {max(sizes)}, {d_model}] ({config['lm_model']}'s width): build it with "
                "SemConvTokenizer and the same lm_model"
            )
        self.original_vocab_size = len(tokenizer)
        tokenizer.add_tokens(item_token_names(sizes))
        self.lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        rows = torch.cat([torch.as_tensor(codebooks[level, :size]) for level, size in enumerate(sizes)])
        with torch.no_grad():
            self.lm.get_input_embeddings().weight[self.original_vocab_size :] = rows
        starts = self.original_vocab_size + torch.tensor([0] + sizes[:-1]).cumsum(0)
        self.register_buffer("item_token_starts", starts, persistent=False)  # [L]: vocabulary id of code 0 per level

    def item_token_ids(self, items):
        """`items [...]` -> the vocabulary ids of their tokens `[..., L]` (padding items: the pad id)."""
        codes = self.item_codes[items]
        return (codes + self.item_token_starts).masked_fill(codes < 0, self.pad_id)

    def sequence_states(self, item_seq):
        """`[CLS] history_prompt` + one position per history item (the sum of its token embeddings, plus with
        `stage_one_item_input` the projection of its stage-1 embedding), causal: `item_seq [B, T]` -> the state of
        every item position `[B, T, d]`."""
        batch, length = item_seq.shape
        words = self.lm.get_input_embeddings()
        items = words(self.item_token_ids(item_seq)).sum(2)  # [B, T, d]
        if self.stage_one_item_projection is not None:
            items = items + self.stage_one_item_projection(self.stage_one_item_embeddings[item_seq])
        items = items * (item_seq > 0).unsqueeze(-1)
        prompt = words(self.history_prompt).expand(batch, -1, -1)  # [B, P, d]
        real = torch.cat([torch.ones_like(self.history_prompt, dtype=torch.bool).expand(batch, -1), item_seq > 0], 1)
        size = real.shape[1]
        causal = torch.ones(size, size, dtype=torch.bool, device=item_seq.device).tril()
        mask = (causal & real.unsqueeze(1)).unsqueeze(1)  # [B, 1, P+T, P+T], True = attend
        states = self.lm(inputs_embeds=torch.cat([prompt, items], 1), attention_mask=mask).last_hidden_state
        return states[:, -length:]

    def pooled_states(self, token_ids):
        """Mean-pooled states of right-padded token sequences `[M, S]` (bidirectional) -> `[M, d]`."""
        real = token_ids != self.pad_id
        width = int(real.sum(1).max())
        token_ids, real = token_ids[:, :width], real[:, :width]
        hidden = self.lm(input_ids=token_ids, attention_mask=real.long()).last_hidden_state  # [M, S, d]
        return (hidden * real.unsqueeze(-1)).sum(1) / real.sum(1, keepdim=True)

    def negative_loss(self, state, items, level_log_probs=None):
        """Mean NEG(s, i): CE of the true item's log p(codes) against `num_negatives` uniformly sampled items'.

        `level_log_probs`: the parallel head's per-level log-probabilities of `state` (`CodeHead.parallel_log_probs`)
        when the caller has them already (the generation step has), read instead of computed again.
        """
        negatives = torch.randint(1, self.n_items, (items.shape[0], self.num_negatives), device=items.device)
        candidates = torch.cat([items.unsqueeze(1), negatives], 1)  # [N, 1 + n_neg]
        scores = self.code_head.candidate_log_probs(state, self.item_codes[candidates], level_log_probs).float()
        false_negative = F.pad(negatives == items.unsqueeze(1), (1, 0))
        scores = scores.masked_fill(false_negative, -torch.inf)
        return F.cross_entropy(scores, torch.zeros_like(items))

    def item_loss(self, state, items, code_log_probs=None, level_log_probs=None):
        """GEN(s, i) + neg_weight * NEG(s, i), averaged; `code_log_probs [N, L]` and `level_log_probs` (the parallel
        head's per-level log-probabilities of `state`) when already computed, else computed here once for both."""
        if code_log_probs is None:
            code_log_probs, level_log_probs = self.code_head.teacher_forced(state, self.item_codes[items])
        loss = self.code_and_item_loss(state, items, code_log_probs)
        if self.neg_weight > 0:
            loss = loss + self.neg_weight * self.negative_loss(state, items, level_log_probs)
        return loss

    def sample_items(self, pool):
        """Up to `aux_batch_size` distinct items drawn uniformly from `pool [P]`."""
        return pool[torch.randperm(pool.shape[0], device=pool.device)[: self.aux_batch_size]]

    def textual_loss(self):
        """L_text = (L_t2i + L_i2t) / 2 over sampled items (see the class docstring)."""
        items = self.sample_items(torch.arange(1, self.n_items, device=self.item_codes.device))
        text_ids = self.text_ids[items]  # [M, S]
        text_to_item = self.item_loss(self.pooled_states(text_ids), items)

        count = items.shape[0]
        item_input = torch.cat(
            [
                self.item_prompt.expand(count, -1),
                self.item_token_ids(items),
                torch.full((count, 1), self.sep_id, device=items.device),
            ],
            1,
        )
        hidden = self.text_transform(self.pooled_states(item_input))  # [M, d]
        words = self.lm.get_input_embeddings().weight[: self.original_vocab_size]  # [V, d]
        word_log_probs = (hidden @ words.T).float().log_softmax(-1)  # [M, V]
        is_word = torch.isin(text_ids, self.special_ids).logical_not()  # [M, S]
        gathered = word_log_probs[:, text_ids.flatten()].view(count, count, -1)  # [M (item), M (text), S]
        scores = (gathered * is_word).sum(-1) / is_word.sum(-1).clamp(min=1)  # w(i, j) [M, M]
        item_to_text = -scores.diagonal().mean()
        if self.neg_weight > 0:
            item_to_text = item_to_text + self.neg_weight * F.cross_entropy(
                scores, torch.arange(count, device=items.device)
            )
        return (text_to_item + item_to_text) / 2

    def query_loss(self):
        """L_query over sampled items that have a query."""
        items = self.sample_items(self.query_items)
        return self.item_loss(self.pooled_states(self.query_ids[items]), items)

    def calculate_loss(self, interaction):
        """The weighted tasks of this batch, one tuple entry each (RecBole sums and logs them)."""
        losses = []
        with self.autocast():
            if self.seq_weight > 0:
                step = self.generation_step(interaction)
                gen_and_neg = self.item_loss(
                    step.target_state, step.target_items, step.code_log_probs, step.level_log_probs
                )
                losses.append(self.seq_weight * gen_and_neg)
            if self.text_weight > 0:
                losses.append(self.text_weight * self.textual_loss())
            if self.query_weight > 0:
                losses.append(self.query_weight * self.query_loss())
        return tuple(losses)
