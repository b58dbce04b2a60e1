"""TIGER and PRORec as RecBole models: scores RecBole's evaluator can use, KD losses, one epoch end to end."""

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_prorec import semantic, tokenize
from recbole_prorec.model.item_causal import SequenceEncoder
from recbole_prorec.model.prorec import FUSION_WEIGHTS, PRORec, in_batch_info_nce
from recbole_prorec.model.tiger import TIGER, build_semantic_artifact
from recbole_prorec.quantization import ItemCodeArtifact, quantize, recorded_digest
from recbole_prorec.quick_start import build_config, cached_stage_one_result, run

TINY_MODEL = {
    "d_model": 16,
    "attention_heads": 2,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "d_ff": 32,
    "n_user_buckets": 7,
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 2,
    "learning_rate": 0.01,
    "stopping_step": 1,
}
# The layouts that rank by beam search: TIGER's paper layout, and the item-causal one with an autoregressive head.
BEAM_LAYOUTS = [
    {"layout": "seq2seq", "train_windows": False, "item_id_input": False, "warm_start": False, "item_loss_weight": 0},
    {"code_head": "autoregressive", "item_loss_weight": 0},
]


class FakeEncoder:
    """A fixed random 12-d vector per text, so no sentence-transformers model is needed."""

    def encode(self, texts, batch_size, show_progress_bar, convert_to_numpy):
        seeds = [int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) for text in texts]
        return np.stack([np.random.default_rng(seed).standard_normal(12) for seed in seeds])


def make_config(model_class, fast_run_config, **overrides):
    config_dict = {**fast_run_config, **TINY_MODEL, "text_fields": ["title", "brand", "categories"], **overrides}
    config = build_config(model_class, "tiny", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    return config


def stage_one_encoder_weights(dataset, config, seed=0):
    """Random weights of a SASRec encoder with the tiny sizes, standing in for a trained tokenizer's."""
    torch.manual_seed(seed)
    encoder = SequenceEncoder(
        dataset.item_num,
        config["MAX_ITEM_LIST_LENGTH"],
        TINY_MODEL["hidden_size"],
        TINY_MODEL["n_layers"],
        TINY_MODEL["n_heads"],
        TINY_MODEL["inner_size"],
        0.5,
        0.5,
        "gelu",
        1e-12,
    )
    return {name: value.numpy() for name, value in encoder.state_dict().items()}


def write_artifact(dataset, path, seed=0, encoder=None):
    """Residual k-means codes (2 levels of 4 + collision level) of random 'integrated' embeddings."""
    embeddings = np.random.default_rng(seed).standard_normal((dataset.item_num, 8)).astype(np.float32)
    embeddings[0] = 0
    result = quantize(embeddings[1:], method="rkmeans", levels=2, codebook_size=4, seed=seed)
    item_tokens = dataset.field2id_token[dataset.iid_field]
    return str(ItemCodeArtifact.from_quantization(result, item_tokens, embeddings, encoder=encoder).save(path))


def prepared(model_class, fast_run_config, **overrides):
    """Config, dataloaders and model, with a hand-made artifact unless one is given."""
    config = make_config(model_class, fast_run_config, **overrides)
    dataset = create_dataset(config)
    if not config["tokenizer_artifact"]:
        weights = stage_one_encoder_weights(dataset, config)
        config["tokenizer_artifact"] = write_artifact(dataset, "artifacts/tiny", encoder=weights)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train_data._dataset)
    return config, model, (train_data, valid_data, test_data)


@pytest.fixture(params=BEAM_LAYOUTS, ids=["seq2seq", "autoregressive_head"])
def tiger(request, fast_run_config):
    return prepared(TIGER, fast_run_config, **request.param)


def beam_scores(model, data):
    """The first evaluation batch's interaction and its `full_sort_predict` scores, in eval mode."""
    interaction = next(iter(data))[0]
    model.eval()
    with torch.no_grad():
        return interaction, model.full_sort_predict(interaction)


def test_full_sort_predict_scores_the_beam_and_nothing_else(tiger):
    config, model, (_, valid_data, _) = tiger
    interaction, scores = beam_scores(model, valid_data)
    assert scores.shape == (len(interaction), model.n_items)
    finite = torch.isfinite(scores)
    assert (finite.sum(1) == config["beam_size"]).all()
    assert not finite[:, 0].any()  # the padding item is never generated


def test_predict_gives_the_beam_scores_of_the_generated_items(tiger):
    _, model, (_, valid_data, _) = tiger
    interaction, scores = beam_scores(model, valid_data)
    interaction.update(type(interaction)({model.ITEM_ID: scores.argmax(1)}))
    with torch.no_grad():
        predicted = model.predict(interaction)
    torch.testing.assert_close(predicted, scores.max(1).values, atol=0.05, rtol=0.01)  # bf16 autocast


def test_beam_narrower_than_topk_is_an_error(fast_run_config):
    with pytest.raises(ValueError, match=r"beam_size \(10\) must be >= the largest topk \(20\)"):
        prepared(TIGER, fast_run_config, beam_size=10)


def test_prorec_keeps_the_tokenizer_sizes_that_its_warm_start_needs(fast_run_config):
    # TIGER.yaml's default width is not the tokenizer's; PRORec (which inherits TIGER.yaml) must pin the tokenizer's.
    sizes = ("hidden_size", "inner_size", "n_layers", "n_heads")
    prorec, tokenizer = (
        build_config(model, "tiny", config_dict=fast_run_config) for model in (PRORec, "PRORecTokenizer")
    )
    assert {key: prorec[key] for key in sizes} == {key: tokenizer[key] for key in sizes}


def test_prorec_without_an_artifact_says_how_to_get_one(fast_run_config):
    config = make_config(PRORec, fast_run_config)
    dataset = create_dataset(config)
    with pytest.raises(ValueError, match=r"PRORec reads .*tokenizer_artifact.* trains PRORecTokenizer first"):
        PRORec(config, dataset)


def test_artifact_of_another_dataset_is_rejected(fast_run_config):
    config = make_config(TIGER, fast_run_config)
    dataset = create_dataset(config)
    embeddings = np.zeros((dataset.item_num, 4), dtype=np.float32)
    codes = np.arange(dataset.item_num * 2).reshape(-1, 2)
    codes[0] = -1
    tokens = ["[PAD]"] + [f"other{i}" for i in range(1, dataset.item_num)]
    config["tokenizer_artifact"] = str(ItemCodeArtifact(codes, tokens, embeddings).save("artifacts/other"))
    with pytest.raises(ValueError, match="does not match the dataset's item order"):
        TIGER(config, dataset)


@pytest.mark.parametrize("bf16", [False, True])
def test_info_nce_ignores_duplicate_targets_as_negatives(bf16):
    keys = torch.tensor([[0.6, 0.8, 0.1], [0.6, 0.8, 0.1], [0.0, 0.3, 1.0]])
    queries = keys.clone()
    # Without the mask rows 0 and 1 would be each other's hardest negatives: a loss of at least log 2 for them.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = in_batch_info_nce(queries, keys, temperature=0.05)
        by_id = in_batch_info_nce(queries, keys, temperature=0.05, key_ids=torch.tensor([7, 7, 3]))
    assert loss.dtype == torch.float32 and loss.item() < 1e-3
    assert by_id.item() == pytest.approx(loss.item(), abs=1e-6)


def _explicit_nce(queries, keys, temperature):
    """The docstring's NCE, one query at a time: keys equal to the query's own key are not its negatives."""
    queries, keys = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    terms = []
    for n in range(len(keys)):
        candidates = (keys @ keys[n] <= 1 - 1e-6) | (torch.arange(len(keys)) == n)
        logits = keys[candidates] @ queries[n] / temperature
        terms.append(logits.logsumexp(0) - keys[n] @ queries[n] / temperature)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("item_weight, history_weight", [(0.5, 0.0), (0.0, 2.0), (0.0, 0.0)])
def test_prorec_loss_is_code_ce_plus_the_weighted_distillation_terms(fast_run_config, item_weight, history_weight):
    """L = L_CE + w_item * NCE(P_item(s_n), e_{y_n}) + w_hist * NCE(P_hist(m_n), mean of e over seen history)."""
    _, model, (train_data, _, _) = prepared(
        PRORec,
        fast_run_config,
        kd_item_weight=item_weight,
        kd_history_weight=history_weight,
        item_loss_weight=0,
        bf16=False,
    )
    assert (model.item_projection is None) == (item_weight == 0)
    assert (model.history_projection is None) == (history_weight == 0)
    model.eval()  # no dropout: calculate_loss and the explicit computation see the same states
    batch = next(iter(train_data))
    with torch.no_grad():
        loss = model.calculate_loss(batch)
        step = model.generation_step(batch)
        expected = -step.code_log_probs.mean()
        embeddings, tau = model.integrated_embeddings, model.kd_temperature
        if item_weight:
            queries = model.item_projection(step.target_state)
            expected += item_weight * _explicit_nce(queries, embeddings[step.target_items], tau)
        if history_weight:
            keys = torch.stack([embeddings[seen[seen > 0]].mean(0) for seen in step.history_items])
            expected += history_weight * _explicit_nce(model.history_projection(step.history_state), keys, tau)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("model_class", [TIGER, PRORec])
@pytest.mark.parametrize("layout", [{}] + BEAM_LAYOUTS, ids=["item_causal", "seq2seq", "autoregressive_head"])
def test_one_epoch_trains_and_evaluates_through_recbole(model_class, layout, fast_run_config):
    # The checkpoint's Config names the model class; compat allow-lists the classes that model/__init__ exports.
    torch.serialization.add_safe_globals([model_class])
    config, model, (train_data, valid_data, test_data) = prepared(model_class, fast_run_config, epochs=2, **layout)
    trainer = model.trainer_class(config, model)
    losses = [trainer._train_epoch(train_data, epoch) for epoch in range(2)]
    assert losses[1] < losses[0]
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    assert set(result) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}


def test_tiger_builds_and_caches_its_semantic_artifact(fast_run_config, monkeypatch):
    calls = []

    def fake_loader(name, device="cpu"):
        calls.append(name)
        return FakeEncoder()

    monkeypatch.setattr(semantic, "load_sentence_encoder", fake_loader)
    overrides = {
        "semantic_model": "fake",
        "rqvae_levels": 2,
        "rqvae_codebook_size": 4,
        "rqvae_kwargs": {"epochs": 3, "hidden_dims": [16], "latent_dim": 4, "show_progress": False},
    }
    config = make_config(TIGER, fast_run_config, **overrides)
    dataset = create_dataset(config)
    path = build_semantic_artifact(dataset, config)
    artifact = ItemCodeArtifact.load(path, dataset)
    assert artifact.codes.shape == (dataset.item_num, 3) and artifact.config["method"] == "rqvae"
    assert build_semantic_artifact(dataset, config) == path and calls == ["fake"]  # second call: cached

    model = TIGER(config, dataset)  # no tokenizer_artifact: TIGER builds (here: reuses) its own
    assert torch.equal(model.item_codes, torch.from_numpy(artifact.codes))
    assert build_semantic_artifact(dataset, make_config(TIGER, fast_run_config, **overrides, seed=7)) != path


def test_tiger_product_quantizes_its_text_embeddings_into_long_codes(fast_run_config, monkeypatch):
    monkeypatch.setattr(semantic, "load_sentence_encoder", lambda name, device="cpu": FakeEncoder())
    overrides = {"semantic_model": "fake", "semantic_quantizer": "pq", "pq_digits": 4, "pq_codebook_size": 4}
    config = make_config(TIGER, fast_run_config, **overrides)
    dataset = create_dataset(config)
    path = build_semantic_artifact(dataset, config)
    artifact = ItemCodeArtifact.load(path, dataset)
    assert artifact.codes.shape == (dataset.item_num, 5) and artifact.config["method"] == "pq"
    assert "-TIGER-pq-" in path and artifact.stats["collision_rate_after"] == 0.0
    with pytest.raises(ValueError, match="semantic_quantizer must be one of"):
        build_semantic_artifact(
            dataset, make_config(TIGER, fast_run_config, **overrides | {"semantic_quantizer": "opq"})
        )


def test_prorec_run_trains_the_tokenizer_first_then_reuses_its_artifact(fast_run_config, monkeypatch):
    monkeypatch.setattr(semantic, "load_sentence_encoder", lambda name, device="cpu": FakeEncoder())
    overrides = {
        **fast_run_config,
        **TINY_MODEL,
        "text_fields": ["title", "brand", "categories"],
        "cache_dir": "cache",
        "tokenizer_config": {"code_levels": 2, "codebook_size": 4},
    }
    first = run("PRORec", "tiny", config_dict=overrides)
    assert first["stage_one"]["model"] == "PRORecTokenizer" and first["stage_one"]["artifact"]["path"]
    assert set(first["test_result"]) == set(first["stage_one"]["test_result"])
    assert first["artifact"]["stats"]["collision_rate_after"] == 0.0  # stage 2 reports the codes it generated over
    assert first["artifact"]["codes_from"] == first["stage_one"]["artifact"]["path"]
    assert first["artifact"]["sha256"] == recorded_digest(first["stage_one"]["artifact"]["path"])
    # Fusion weight chosen on validation after training: training (validated at w = 0) is the plain run's
    fused = run("PRORec", "tiny", config_dict={**overrides, "stage_one_fusion": "auto"})
    assert [score for _, score, _ in fused["valid_curve"]] == [score for _, score, _ in first["valid_curve"]]
    chosen = fused["chosen_on_validation"]
    assert sorted(chosen["valid_scores"]) == list(FUSION_WEIGHTS)
    assert chosen["valid_scores"][chosen["stage_one_fusion"]] == max(chosen["valid_scores"].values())
    assert chosen["valid_scores"][0.0] == pytest.approx(first["best_valid_score"])
    assert "chosen_on_validation" not in first
    second = run("PRORec", "tiny", config_dict=overrides)
    # The cached artifact was found: no second tokenizer training, but its result is still reported.
    assert second["stage_one"]["reused"] and second["stage_one"]["test_result"] == first["stage_one"]["test_result"]
    assert second["stage_one"]["config_hash"] == first["stage_one"]["config_hash"]
    # Codes rebuilt in place since: the kept result no longer describes them and is not reported.
    path = first["stage_one"]["artifact"]["path"]
    trained = ItemCodeArtifact.load(path)
    swapped = trained.codes.copy()
    swapped[[1, 2]] = swapped[[2, 1]]
    dataclasses.replace(trained, codes=swapped).save(path)
    assert cached_stage_one_result(path) is None
    trained.save(path)  # the trained codes back for the checks below
    assert cached_stage_one_result(path)["reused"]
    assert second["test_result"] == first["test_result"]

    # A standalone tokenizer run with the same stage-1 settings writes the artifact PRORec looks for.
    tokenizer_only = {k: v for k, v in overrides.items() if k != "tokenizer_config"}
    tokenizer_only.update(overrides["tokenizer_config"])
    standalone = run("PRORecTokenizer", "tiny", config_dict=tokenizer_only)
    assert standalone["artifact"]["path"] == first["stage_one"]["artifact"]["path"]

    # Another code source of the same stage 1, rebuilt from its checkpoint, is what that variant's PRORec reads;
    # the checkpoint's own artifact stays as it was.
    integrated = ItemCodeArtifact.load(first["stage_one"]["artifact"]["path"])
    rebuilt = tokenize.main(["--checkpoint", first["stage_one"]["saved_model_file"], "--code_source", "concat"])
    assert rebuilt["path"] != first["stage_one"]["artifact"]["path"]
    assert np.array_equal(ItemCodeArtifact.load(first["stage_one"]["artifact"]["path"]).codes, integrated.codes)
    concat = run(
        "PRORec",
        "tiny",
        config_dict={**overrides, "tokenizer_config": {**overrides["tokenizer_config"], "code_source": "concat"}},
    )
    assert "stage_one" not in concat and concat["artifact"]["stats"] == rebuilt["stats"]
    kmeans_on_concat = tokenize.main(
        ["--checkpoint", first["stage_one"]["saved_model_file"], "--code_source", "concat", "--quantizer", "pq"]
    )  # the checkpoint's quantizer: same key
    assert kmeans_on_concat["path"] == rebuilt["path"]
    # Longer codes of the same stage 1 likewise: what a PRORec asking its tokenizer for 3 levels reads, untrained.
    longer = tokenize.main(["--checkpoint", first["stage_one"]["saved_model_file"], "--code_levels", "3"])
    assert ItemCodeArtifact.load(longer["path"]).codes.shape[1] > integrated.codes.shape[1]
    three = run(
        "PRORec",
        "tiny",
        config_dict={**overrides, "tokenizer_config": {**overrides["tokenizer_config"], "code_levels": 3}},
    )
    assert "stage_one" not in three and three["artifact"]["codes_from"] == longer["path"]


def test_a_checkpoint_refuses_an_artifact_with_other_codes(fast_run_config, caplog):
    config, model, (train_data, _, _) = prepared(TIGER, fast_run_config)
    state = model.state_dict()
    assert "artifact_sha256" in state
    same = TIGER(config, train_data._dataset)
    same.load_state_dict(state)  # the codes it was trained on: loads
    write_artifact(train_data._dataset, config["tokenizer_artifact"], seed=1)  # rebuilt differently, same path
    rebuilt = TIGER(config, train_data._dataset)
    assert not torch.equal(rebuilt.item_codes, model.item_codes)
    with pytest.raises(ValueError, match=r"checkpoint was trained on item codes with sha256 .* but the artifact"):
        rebuilt.load_state_dict(state)
    older = {k: v for k, v in state.items() if k != "artifact_sha256"}  # saved before the digest was recorded
    same.load_state_dict(older)
    assert "not verified" in caplog.text
