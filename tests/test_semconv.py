"""SemConv: four language-model tokens per item, the alignment tasks, both stages through RecBole, offline loading.

The language model is MiniLM (bundled, offline) cut to one layer; it is loaded once and copied into each model.
"""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed
from test_item_causal import expected_generation_loss
from test_serve import model_top_k

from recbole_prorec import semantic
from recbole_prorec.model import semconv
from recbole_prorec.model.semconv import (
    CODEBOOKS,
    SemConv,
    check_unsupported_options,
    item_queries,
    item_token_names,
    ordinary_token_ids,
)
from recbole_prorec.quantization import ItemCodeArtifact, resolve_in_last_level
from recbole_prorec.quantization.token_space import quantize_in_token_space
from recbole_prorec.quick_start import build_config, create_model_dataset, run
from recbole_prorec.serve import open_store
from recbole_prorec.serve.precache import load_recommender, precache, user_histories

TINY = {
    "lm_layers": 1,
    "codebook_size": 8,
    "rqvae_kwargs": {"hidden_dims": [16], "epochs": 2},
    "aux_batch_size": 8,
    "num_negatives": 5,
    "text_max_tokens": 16,
    "bf16": False,
    "text_fields": ["title", "brand", "categories"],
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 2,
}


class FakeEncoder:
    """Stage 1's frozen text embeddings: a fixed random 12-d vector per text (no sentence-transformers model)."""

    def encode(self, texts, batch_size, show_progress_bar, convert_to_numpy):
        return np.stack([np.random.default_rng(len(text)).standard_normal(12) for text in texts])


@pytest.fixture(scope="module")
def language_model():
    """MiniLM's tokenizer and model, loaded once (offline) for the module."""
    return semantic.load_language_model("all-MiniLM-L6-v2")


@pytest.fixture
def offline_models(monkeypatch, language_model):
    """Every load in this test gets a fresh copy of the cached MiniLM; stage 1's text encoder is a fake."""
    monkeypatch.setattr(
        semconv, "load_language_model", lambda name, key="lm_model", pretrained=True: copy.deepcopy(language_model)
    )
    monkeypatch.setattr(semantic, "load_sentence_encoder", lambda name, device="cpu": FakeEncoder())


def token_rows(language_model):
    tokenizer, model = language_model
    return model.get_input_embeddings().weight.detach()[ordinary_token_ids(tokenizer)]


@pytest.fixture
def tiny_semconv(fast_run_config, offline_models, language_model, tmp_path):
    """`make(**overrides)` -> (SemConv, a training batch) on the tiny dataset, over a token-space artifact."""
    artifact = str(tmp_path / "tokens")

    def make(**overrides):
        config_dict = {**fast_run_config, **TINY, "tokenizer_artifact": artifact, **overrides}
        config = build_config(SemConv, "tiny", config_dict=config_dict)
        init_seed(config["seed"], config["reproducibility"])
        train_data, _, test_data = data_preparation(config, create_model_dataset(SemConv, config))
        dataset = train_data.dataset
        if not os.path.exists(artifact + ".npz"):
            embeddings = np.random.default_rng(0).standard_normal((dataset.item_num, 8)).astype(np.float32)
            embeddings[0] = 0
            result, codebooks = quantize_in_token_space(
                embeddings[1:], token_rows(language_model), 4, 8, rqvae_kwargs=TINY["rqvae_kwargs"]
            )
            tokens = dataset.field2id_token[dataset.iid_field]
            encoder = {CODEBOOKS: codebooks.numpy()}
            ItemCodeArtifact.from_quantization(result, tokens, embeddings, encoder=encoder).save(artifact)
        init_seed(config["seed"], config["reproducibility"])
        return SemConv(config, dataset), next(iter(train_data)), test_data

    return make


def test_resolve_in_last_level_keeps_unique_tuples_and_repairs_collisions():
    codes = np.array([[0, 1], [0, 1], [1, 1], [0, 2]])
    distances = np.array([[3, 0, 5], [1, 0, 2], [3, 0, 1], [9, 9, 0]], dtype=float)
    repaired = resolve_in_last_level(codes, distances)
    assert repaired.tolist() == [[0, 1], [0, 0], [1, 1], [0, 2]]  # only the second [0, 1] moves, to its nearest free
    with pytest.raises(ValueError, match="raise codebook_size"):
        resolve_in_last_level(np.zeros((3, 2), dtype=int), np.zeros((3, 2)))


def test_four_unique_tokens_per_item_from_codebooks_in_token_space(language_model):
    rows = token_rows(language_model)
    embeddings = np.random.default_rng(1).standard_normal((60, 8)).astype(np.float32)
    result, codebooks = quantize_in_token_space(embeddings, rows, 4, 8, rqvae_kwargs={"hidden_dims": [16], "epochs": 3})
    assert result.codes.shape == (60, 4)
    assert np.unique(result.codes, axis=0).shape[0] == 60
    assert codebooks.shape == (4, 8, rows.shape[1])
    assert result.stats["collision_rate_after"] == 0
    # tied code vectors stay near token rows: far closer than rows are to random points of the same scale
    nearest = torch.cdist(codebooks.reshape(-1, rows.shape[1]), rows).min(1).values
    assert nearest.mean() < torch.cdist(torch.randn(32, rows.shape[1]) * rows.std(), rows).min(1).values.mean()


def clustered_embeddings(n=400, d=32, clusters=100, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    return (centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("tied", [True, False])
def test_tied_codebooks_use_their_codes_stay_near_their_token_rows_and_the_loss_falls(language_model, tied):
    """Issue 32: token rows far smaller than the latents (here a tenth of MiniLM's, norm ~0.11) used to leave most
    codes unused (pinned on rows away from the data) with a rising loss; the tie is now scale-free."""
    rows = token_rows(language_model)[:5000] * 0.1
    options = {"hidden_dims": [64], "epochs": 15, "batch_size": 128, "beta": 1.0, "show_progress": False}
    result, codebooks = quantize_in_token_space(clustered_embeddings(), rows, 4, 16, tied=tied, rqvae_kwargs=options)
    stats = result.stats
    assert min(stats["utilization"]) >= 0.9 and min(stats["utilization_last_epoch"]) >= 0.9  # before the last reseed
    assert stats["loss_last_epoch"] < stats["loss_first_epoch"]
    for key in ("token_scale_per_level", "token_distance_per_level", "token_cosine_per_level", "perplexity"):
        assert len(stats[key]) == 4
    if tied:
        assert min(stats["token_scale_per_level"]) > 2  # latent units per token unit: the latents are far larger
        # every code is nearer its own token row than token rows are to one another, and points its way
        assert max(stats["token_distance_per_level"]) < stats["token_row_gap"]
        assert min(stats["token_cosine_per_level"]) > 0.8
        assert codebooks.norm(dim=-1).mean() < 2 * rows.norm(dim=-1).mean()  # handed to the LM in token units


def test_negative_loss_reads_the_generation_steps_log_probs(tiny_semconv, monkeypatch):
    """NEG reuses the per-level log-softmax the generation step computed: same value, half the head's work."""
    options = {"seq_weight": 1.0, "text_weight": 0.0, "query_weight": 0.0, "item_loss_weight": 0.0}
    model, batch, _ = tiny_semconv(**options, neg_weight=0.5)
    model.eval()
    head = model.code_head
    with torch.no_grad():
        step = model.generation_step(batch)
        torch.manual_seed(0)
        reused = model.negative_loss(step.target_state, step.target_items, step.level_log_probs)
        torch.manual_seed(0)  # the computation before: every level's log-softmax again, from the state
        negatives = torch.randint(1, model.n_items, (step.target_items.shape[0], model.num_negatives))
        codes = model.item_codes[torch.cat([step.target_items.unsqueeze(1), negatives], 1)]
        state = step.target_state
        scores = sum(head.level_log_probs(state, None, level).gather(1, codes[..., level]) for level in range(4))
        scores = scores.masked_fill(
            torch.nn.functional.pad(negatives == step.target_items.unsqueeze(1), (1, 0)), -torch.inf
        )
        recomputed = torch.nn.functional.cross_entropy(scores, torch.zeros_like(step.target_items))
        torch.testing.assert_close(reused, recomputed, rtol=0, atol=0)
        torch.manual_seed(0)  # without the step's log-probabilities: computed from the state, the same value
        torch.testing.assert_close(
            model.negative_loss(step.target_state, step.target_items), recomputed, rtol=0, atol=0
        )

        calls = []
        original = head.level_log_probs
        monkeypatch.setattr(head, "level_log_probs", lambda *args: calls.append(args[-1]) or original(*args))
        torch.manual_seed(0)
        (loss,) = model.calculate_loss(batch)
    assert calls == [0, 1, 2, 3]  # once per level for the code CE and the negatives together
    torch.testing.assert_close(loss, -step.code_log_probs.mean() + 0.5 * recomputed)


@pytest.mark.parametrize(
    "option, value",
    [
        ("item_id_input", True),
        ("item_id_output", True),
        ("code_output", False),
        ("code_input", False),
        ("code_input_dropout", 0.5),
        ("rqvae_levels", 2),
        ("d_model", 64),
    ],
)
def test_tiger_options_semconv_ignores_are_errors(fast_run_config, offline_models, option, value):
    check_unsupported_options(build_config(SemConv, "tiny", config_dict={**fast_run_config, **TINY}))  # defaults pass
    supported = {"item_loss_weight": 0.5, "code_loss_weight": 2.0}  # TIGER's generation-loss weights: SemConv's GEN
    check_unsupported_options(build_config(SemConv, "tiny", config_dict={**fast_run_config, **TINY, **supported}))
    config = build_config(SemConv, "tiny", config_dict={**fast_run_config, **TINY, option: value})
    with pytest.raises(ValueError, match=rf"SemConv does not support these TIGER options: {option}: {value!r}"):
        check_unsupported_options(config)
    if option == "item_id_input":  # a run refuses it before stage 1 trains
        with pytest.raises(ValueError, match="item_id_input: True"):
            run("SemConv", "tiny", config_dict={**fast_run_config, **TINY, option: value})


@pytest.mark.parametrize("weight, code_weight", [(0.5, 1.0), (1.0, 0.0)])
def test_item_loss_adds_the_cross_entropy_of_the_target_among_every_item(tiny_semconv, weight, code_weight):
    """Issue 32: GEN = code_loss_weight x per-level CE + item_loss_weight x CE of the target among every item, the
    ranking evaluation reads (TIGER's item-level loss)."""
    options = {"seq_weight": 1.0, "text_weight": 0.0, "query_weight": 0.0, "neg_weight": 0.0}
    model, batch, _ = tiny_semconv(**options, item_loss_weight=weight, code_loss_weight=code_weight)
    model.eval()
    with torch.no_grad():
        (loss,) = model.calculate_loss(batch)
    assert loss.item() == pytest.approx(expected_generation_loss(model, batch, code_weight, weight), rel=1e-4)


def test_stage_one_item_input_adds_a_projection_of_the_stage_one_embedding(tiny_semconv):
    """Issue 32: each history position can read stage 1's item embedding beside its four tokens (the default)."""
    plain, batch, _ = tiny_semconv(stage_one_item_input=False)
    model, _, _ = tiny_semconv()
    assert plain.stage_one_item_projection is None
    assert torch.equal(model.stage_one_item_embeddings, torch.from_numpy(model.artifact.embeddings))
    plain.eval(), model.eval()
    item_seq = batch[model.ITEM_SEQ]
    with torch.no_grad():
        states = model.sequence_states(item_seq)
        real = item_seq > 0
        assert not torch.allclose(states[real], plain.sequence_states(item_seq)[real])
        model.stage_one_item_projection.weight.zero_()  # without the projection: exactly the four tokens' input
        model.stage_one_item_projection.bias.zero_()
        torch.testing.assert_close(model.sequence_states(item_seq), plain.sequence_states(item_seq))


def test_item_tokens_join_the_vocabulary_and_round_trip_unsplit(tiny_semconv):
    model, _, _ = tiny_semconv()
    item = 5
    ids = model.item_token_ids(torch.tensor(item)).tolist()  # [4]
    names = [f"<{letter}_{int(code)}>" for letter, code in zip("abcd", model.item_codes[item])]
    tokenizer = model.tokenizer
    assert tokenizer.tokenize("item: " + "".join(names)) == ["item", ":", *names]
    assert tokenizer.convert_tokens_to_ids(names) == ids
    assert len(tokenizer) == model.original_vocab_size + len(item_token_names(model.code_index.codebook_sizes))
    codebooks = torch.as_tensor(model.artifact.encoder[CODEBOOKS])
    embedding = model.lm.get_input_embeddings().weight
    assert torch.equal(embedding[ids[1]], codebooks[1, model.item_codes[item, 1]])  # started from the code vector


def test_beam_search_emits_only_valid_items(tiny_semconv):
    model, _, test_data = tiny_semconv(code_head="autoregressive", beam_size=20, item_loss_weight=0.0)
    model.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)  # [B, n_items]
    finite = torch.isfinite(scores)
    assert finite.sum(1).eq(20).all() and not finite[:, 0].any()  # beam_size real items per user, never padding


@pytest.mark.parametrize("task", ["seq_weight", "text_weight", "query_weight"])
def test_each_task_loss_decreases(tiny_semconv, task):
    weights = {name: 1.0 if name == task else 0.0 for name in ("seq_weight", "text_weight", "query_weight")}
    model, batch, _ = tiny_semconv(**weights, neg_weight=0.5)

    def loss():  # same sampled items and negatives, no dropout
        torch.manual_seed(0)
        model.eval()
        with torch.no_grad():
            return float(sum(model.calculate_loss(batch)))

    before = loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(4):  # on the same batch, sampled items and negatives
        torch.manual_seed(0)
        optimizer.zero_grad()
        sum(model.calculate_loss(batch)).backward()
        optimizer.step()
    assert loss() < before


def test_queries_name_the_leaf_category_and_brand(tiny_semconv):
    model, _, test_data = tiny_semconv()
    dataset = test_data.dataset
    queries = item_queries(
        dataset, "categories", "brand", "looking for {category} by {brand}", "looking for {category}"
    )
    item = dataset.field2token_id[dataset.iid_field]["i4"]  # title "green widget number 4", Toys > green, brand4
    assert queries[item] == "looking for green by brand4" and queries[0] == ""
    no_brand = item_queries(dataset, "categories", None, "{category} by {brand}", "looking for {category}")
    assert no_brand[item] == "looking for green"
    with pytest.raises(ValueError, match=r"query_category_field / query_brand_field: .*genre.*query_weight: 0"):
        item_queries(dataset, "genre", None, "{category} by {brand}", "{category}")
    assert model.query_items.tolist() == list(range(1, dataset.item_num))


def test_both_stages_one_epoch_through_recbole_then_serving(fast_run_config, offline_models, tmp_path):
    """One command trains both stages; the checkpoint plugs into the top-K store like every other model's."""
    result = run("SemConv", "tiny", config_dict={**fast_run_config, **TINY})
    stats = result["stage_one"]["artifact"]["stats"]
    assert stats["levels"] == 4 and stats["collision_rate_after"] == 0
    artifact = ItemCodeArtifact.load(result["stage_one"]["artifact"]["path"])
    assert artifact.codes.shape[1] == 4 and CODEBOOKS in artifact.encoder
    assert 0 <= result["test_result"]["ndcg@10"] <= 1

    checkpoint = result["saved_model_file"]
    meta = precache(checkpoint, tmp_path / "recs.sqlite", k=5, split="test")
    _, model, _, test_dataset = load_recommender(checkpoint)
    expected = model_top_k(checkpoint, *user_histories(model, test_dataset, "test"), k=5)
    store = open_store(tmp_path / "recs.sqlite")
    assert meta["users"] == len(expected) and store.meta["model"] == "SemConv"
    assert all(store.top_k(user).items == items for user, items in expected.items())


def test_loads_offline_and_names_a_missing_model_path():
    script = (
        "from recbole_prorec.semantic import load_language_model\n"
        "tokenizer, model = load_language_model('all-MiniLM-L6-v2')\n"
        "print(type(model).__name__, len(tokenizer))\n"
        "try:\n"
        "    load_language_model('/no/such/model')\n"
        "except FileNotFoundError as error:\n"
        "    print(error)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    output = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    loaded, error = output.strip().split("\n")
    assert loaded == "BertModel 30522"
    assert error.startswith("lm_model: no local Hugging Face model at '/no/such/model'")
