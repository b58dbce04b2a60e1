"""PRORecTokenizer (stage 1): alignment loss, modality adapter, one RecBole epoch, artifact, checkpoint CLI."""

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_tiny_dataset
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import init_seed

from recbole_prorec import analysis, semantic, tokenize
from recbole_prorec.model.tokenizer import (
    ADAPTATIONS,
    AdaptiveLayerNorm,
    ModalityAdapter,
    PRORecTokenizer,
    anchor_conditioned_info_nce,
    symmetric_info_nce,
)
from recbole_prorec.quantization import ItemCodeArtifact
from recbole_prorec.quick_start import build_config

SEMANTIC_DIM = 12


class FakeEncoder:
    """A fixed random vector per text, so the test needs no sentence-transformers model."""

    def encode(self, texts, batch_size, show_progress_bar, convert_to_numpy):
        seeds = [int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) for text in texts]
        return np.stack([np.random.default_rng(seed).standard_normal(SEMANTIC_DIM) for seed in seeds])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of PRORecTokenizer through RecBole's Trainer on a tiny dataset, in a scratch folder."""
    folder = tmp_path_factory.mktemp("stage1")
    write_tiny_dataset(folder / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(semantic, "load_sentence_encoder", lambda name, device="cpu": FakeEncoder())
        config = build_config(
            PRORecTokenizer,
            "tiny",
            config_dict={
                "data_path": str(folder / "data"),
                "epochs": 1,
                "train_batch_size": 32,
                "codebook_size": 4,
                "use_gpu": False,
                "show_progress": False,
                "semantic_model": "fake",
                "text_fields": ["title", "brand", "categories"],
            },
        )
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train_data, valid_data, _ = data_preparation(config, dataset)
        model = PRORecTokenizer(config, train_data._dataset)
        with pytest.raises(RuntimeError, match="run_recbole_prorec.py"):  # RecBole's loop would end without codes
            Trainer(config, model).fit(train_data, valid_data, saved=False, show_progress=False)
        model.codes_written_at_training_end = True  # as quick_start.run does; the tests call on_training_end
        trainer = Trainer(config, model)
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        yield {
            "folder": folder,
            "config": config,
            "dataset": dataset,
            "model": model,
            "trainer": trainer,
            "train_data": train_data,
        }


def test_info_nce_equals_a_hand_computation():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positives = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    t = 0.5
    # cosines: a0.p0 = 1, a0.p1 = 1/sqrt2, a1.p0 = 0, a1.p1 = 1/sqrt2
    s = 1 / math.sqrt(2)
    rows = [
        -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(s / t))),
        -math.log(math.exp(s / t) / (math.exp(0) + math.exp(s / t))),
    ]
    columns = [
        -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0))),
        -math.log(math.exp(s / t) / (math.exp(s / t) + math.exp(s / t))),
    ]
    expected = 0.5 * (sum(rows) / 2 + sum(columns) / 2)
    assert symmetric_info_nce(anchors, positives, t).item() == pytest.approx(expected, rel=1e-6)


def test_adaptive_layernorm_starts_as_layernorm_and_conditions_each_row():
    norm = AdaptiveLayerNorm(hidden_size=6, condition_size=4, eps=1e-12)
    x, condition = torch.randn(5, 6), torch.randn(5, 4)
    out = norm(x, condition)
    assert torch.allclose(out, torch.nn.functional.layer_norm(x, (6,), eps=1e-12), atol=1e-6)
    (out * torch.randn(5, 6)).sum().backward()
    for layer in (norm.gamma, norm.beta):
        assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0
    with torch.no_grad():
        norm.gamma.weight.normal_()
        norm.beta.weight.normal_()
    same_input = x[:1].expand(2, 6)
    out = norm(same_input, condition[:2])
    assert not torch.allclose(out[0], out[1])  # one input, two conditions: two outputs


def test_adapter_uses_the_condition_only_under_adaln():
    semantic, condition = torch.randn(3, 12), torch.randn(3, 6)
    for adaptation in ADAPTATIONS:
        adapter = ModalityAdapter(12, 6, 16, dropout=0.0, adaptation=adaptation, eps=1e-12)
        if adaptation == "adaln":
            torch.nn.init.normal_(adapter.norm.beta.weight)
        moved = not torch.allclose(adapter(semantic, condition), adapter(semantic, condition.flip(0)))
        assert moved == (adaptation == "adaln")


def test_anchor_conditioned_info_nce_equals_the_explicit_pairwise_loss():
    torch.manual_seed(0)
    anchors, normalized, scale, shift = (torch.randn(4, 5) for _ in range(4))
    adapted = normalized[None, :, :] * scale[:, None, :] + shift[:, None, :]  # [i, j, d]: text j under anchor i
    logits = torch.nn.functional.cosine_similarity(anchors[:, None, :], adapted, dim=-1) / 0.2
    labels = torch.arange(4)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    assert anchor_conditioned_info_nce(anchors, normalized, scale, shift, 0.2).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_copying_the_condition_does_not_meet_the_alignment():
    """An adapter that ignores the text and copies E_C[i] (scale 0, shift E_C[i]) is at chance, log N."""
    torch.manual_seed(0)
    collaborative, text = torch.randn(8, 5), torch.randn(8, 5)
    copy = symmetric_info_nce(collaborative, collaborative, 0.1)  # what conditioning on the candidate would allow
    guarded = anchor_conditioned_info_nce(collaborative, text, torch.zeros(8, 5), collaborative, 0.1)
    assert copy.item() < 0.1 * math.log(8)
    assert guarded.item() == pytest.approx(math.log(8), rel=1e-5)


def test_unknown_adaptation_is_rejected():
    with pytest.raises(ValueError, match="adaptation must be one of"):
        ModalityAdapter(12, 6, 16, 0.0, "film", 1e-12)


def test_loss_is_next_item_ce_plus_alignment_and_trains_both_sides(trained):
    model, dataset = trained["model"], trained["dataset"]
    assert math.isfinite(trained["trainer"].train_loss_dict[0])
    assert model.semantic_embedding.shape == (dataset.item_num, SEMANTIC_DIM)
    assert torch.equal(model.semantic_embedding[0], torch.zeros(SEMANTIC_DIM))
    model.zero_grad()
    rec_loss, align_loss = model.calculate_loss(next(iter(trained["train_data"])))
    align_loss.backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0
    assert model.adapter.norm.beta.weight.grad.abs().sum() > 0
    assert model.trm_encoder.layer[0].feed_forward.dense_1.weight.grad is None  # alignment skips the encoder
    model.zero_grad()


def test_code_sources_have_expected_widths_and_zero_padding(trained):
    model, n = trained["model"], trained["dataset"].item_num
    widths = {"integrated": 64, "collaborative": 64, "semantic": SEMANTIC_DIM, "concat": 64 + SEMANTIC_DIM}
    for source, width in widths.items():
        embeddings = model.code_embeddings(source)
        assert embeddings.shape == (n, width) and not embeddings[0].any()
    integrated = model.code_embeddings("integrated")[1:]
    assert torch.all(integrated.norm(dim=1) <= 1 + 1e-5)


def test_training_end_writes_an_artifact_that_loads_for_the_dataset(trained, monkeypatch):
    monkeypatch.chdir(trained["folder"])
    model, dataset = trained["model"], trained["dataset"]
    result = model.on_training_end(dataset)
    artifact = ItemCodeArtifact.load(result["path"], dataset=dataset)
    assert result["path"].startswith("saved/cache/artifacts/tiny-PRORecTokenizer-")
    assert artifact.codes.shape == (dataset.item_num, model.artifact_config["code_levels"] + 1)
    assert (artifact.codes[0] == -1).all() and artifact.config["quantizer"] == "pq"
    assert artifact.embeddings.shape == (dataset.item_num, 64)
    assert artifact.config["code_source"] == "integrated" and artifact.config["codebook_size"] == 4
    assert result["stats"]["collision_rate_after"] == 0.0
    # the artifact carries the SASRec encoder that PRORec's warm start loads, and nothing else of the model
    state = trained["model"].state_dict()
    assert "semantic_embedding" not in artifact.encoder and not any(n.startswith("adapter") for n in artifact.encoder)
    assert {"item_embedding.weight", "position_embedding.weight", "LayerNorm.weight"} <= set(artifact.encoder)
    for name, value in artifact.encoder.items():
        np.testing.assert_array_equal(value, state[name].numpy())


def test_unsupported_options_are_rejected(trained):
    config, dataset = trained["config"], trained["dataset"]
    cases = [
        ("code_source", "text", "code_source must be"),
        ("loss_type", "BPR", "loss_type 'CE'"),
        ("code_levels", 65, r"\(64 wide\) into code_levels=65 digits: set code_levels between 1 and 64"),
    ]
    for key, value, message in cases:
        original = config[key]
        config[key] = value
        try:
            with pytest.raises(ValueError, match=message):
                PRORecTokenizer(config, dataset)
        finally:
            config[key] = original


def test_tokenize_cli_rebuilds_an_artifact_from_the_checkpoint(trained, monkeypatch, tmp_path):
    monkeypatch.chdir(trained["folder"])
    output = tmp_path / "concat-codes"
    tokenize.main(
        ["--checkpoint", trained["trainer"].saved_model_file, "--code_source", "concat", "--output", str(output)]
    )
    artifact = ItemCodeArtifact.load(output, dataset=trained["dataset"])
    assert artifact.embeddings.shape == (trained["dataset"].item_num, 64 + SEMANTIC_DIM)
    assert artifact.config["code_source"] == "concat"


def test_domination_analysis_runs_on_the_trained_model(trained, tmp_path):
    rows = analysis.analyze(trained["model"], trained["dataset"], k=3, output_dir=tmp_path)
    assert [row["code_source"] for row in rows] == ["integrated", "collaborative", "semantic", "concat"]
    by_source = {row["code_source"]: row for row in rows}  # each source compared with the model's own modalities
    assert by_source["collaborative"]["overlap_collab"] == 1.0 and by_source["semantic"]["overlap_semantic"] == 1.0
    assert (tmp_path / "domination.png").is_file() and (tmp_path / "domination.json").is_file()


def test_artifact_key_changes_with_the_dataset_file_and_the_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_tiny_dataset(tmp_path / "data")
    settings = {"data_path": str(tmp_path / "data"), "use_gpu": False, "text_fields": ["title"]}

    def key(**overrides):
        return PRORecTokenizer.default_artifact_path(
            build_config(PRORecTokenizer, "tiny", config_dict={**settings, **overrides})
        )

    first = key()
    assert key() == first  # same files, same options: the cached artifact is found
    inter = folder / "tiny.inter"
    inter.write_text(inter.read_text() + "u0\ti29\t99\n")
    changed = key()
    assert changed != first
    assert (
        key(eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"}) != changed
    )
