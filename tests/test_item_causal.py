"""The item-causal layout and the CPU recipe: per-position loss, training windows, exact scoring, warm start,
fusion, sampled validation and the learning-rate schedule."""

import math

import pytest
import torch
import torch.nn.functional as F
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction

from recbole_prorec.data.windows import WindowedSequentialDataset
from recbole_prorec.model.item_causal import UniformDropout, next_items
from recbole_prorec.model.prorec import PRORec
from recbole_prorec.model.tiger import TIGER
from recbole_prorec.quick_start import sample_validation_users
from recbole_prorec.trainer import warmup_cosine
from tests.test_generative_models import BEAM_LAYOUTS, make_config, prepared

DETERMINISTIC = {"bf16": False, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}


def window(model, items, target):
    """An interaction holding one left-aligned history `items` and its `target`."""
    item_seq = torch.zeros(1, model.max_seq_length, dtype=torch.long)
    item_seq[0, : len(items)] = torch.tensor(items)
    return Interaction(
        {
            model.ITEM_SEQ: item_seq,
            model.ITEM_SEQ_LEN: torch.tensor([len(items)]),
            model.POS_ITEM_ID: torch.tensor([target]),
            model.USER_ID: torch.tensor([1]),
        }
    )


@pytest.mark.parametrize("code_head", ["parallel", "autoregressive"])
def test_per_position_loss_equals_the_loss_of_every_prefix(fast_run_config, code_head):
    item_loss_weight = 1.0 if code_head == "parallel" else 0.0  # the item-level loss needs the parallel head
    _, model, _ = prepared(
        TIGER, fast_run_config, code_head=code_head, item_loss_weight=item_loss_weight, **DETERMINISTIC
    )
    model.eval()
    items = [3, 7, 1, 9, 4, 12]
    with torch.no_grad():
        whole = model.generation_step(window(model, items[:-1], items[-1]))
        assert whole.target_items.tolist() == items[1:]
        for length in range(1, len(items)):
            prefix = model.generation_step(window(model, items[:length], items[length]))
            torch.testing.assert_close(prefix.code_log_probs[-1], whole.code_log_probs[length - 1])
            torch.testing.assert_close(prefix.target_state[-1], whole.target_state[length - 1])


def test_next_items_shift_the_window_and_end_with_the_target():
    item_seq = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [1, 2, 3, 4]])
    targets = next_items(item_seq, torch.tensor([3, 1, 4]), torch.tensor([9, 10, 11]))
    assert targets.tolist() == [[6, 7, 9, 0], [10, 0, 0, 0], [2, 3, 4, 11]]


def per_user_targets(dataset, windows):
    """Sorted (user, target item) pairs a training dataset teaches, counting every position of a window."""
    data = dataset.inter_feat
    seq, length = data[dataset.item_id_list_field], data[dataset.item_list_length_field]
    targets = next_items(seq, length, data[dataset.iid_field]) if windows else data[dataset.iid_field].unsqueeze(1)
    users = data[dataset.uid_field].unsqueeze(1).expand_as(targets)
    return sorted(zip(users[targets > 0].tolist(), targets[targets > 0].tolist()))


def test_training_windows_teach_every_training_target_once_and_keep_valid_and_test(fast_run_config):
    splits = {}
    for windows in (False, True):
        config = make_config(TIGER, fast_run_config, train_windows=windows, MAX_ITEM_LIST_LENGTH=4)
        splits[windows] = WindowedSequentialDataset(config).build()
    (train, valid, test), (window_train, window_valid, window_test) = splits[False], splits[True]
    assert len(window_train) < len(train)
    assert per_user_targets(window_train, windows=True) == per_user_targets(train, windows=False)
    for full, thinned in ((valid, window_valid), (test, window_test)):
        full.sort(by=full.uid_field)
        thinned.sort(by=thinned.uid_field)
        for field in (full.uid_field, full.iid_field, full.item_id_list_field):
            assert torch.equal(full.inter_feat[field], thinned.inter_feat[field])


@pytest.mark.parametrize(
    "model_class, options",
    [
        (TIGER, {}),
        (PRORec, {}),
        (PRORec, {"stage_one_fusion": 0.3}),
        (PRORec, {"item_id_output": True}),
        (PRORec, {"item_id_output": True, "code_output": False}),
        (TIGER, {"bf16": True}),
    ],
    ids=["TIGER", "PRORec", "PRORec_fusion", "PRORec_item_id_output", "PRORec_id_output_only", "TIGER_bf16_layers"],
)
def test_parallel_head_scores_every_item_with_its_code_log_probability(fast_run_config, model_class, options):
    """predict and full_sort_predict agree item by item (fusion included), in float32 even after bf16 layers."""
    _, model, (_, valid_data, _) = prepared(model_class, fast_run_config, **{"bf16": False, **options})
    model.eval()
    interaction = next(iter(valid_data))[0][:3]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)  # [3, n_items]
        assert torch.isinf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
        for item in (1, 5, model.n_items - 1):
            interaction.update(Interaction({model.ITEM_ID: torch.full((3,), item)}))
            torch.testing.assert_close(model.predict(interaction), scores[:, item])
    assert scores.dtype == torch.float32


def test_item_logits_rank_as_the_exact_code_scores(fast_run_config):
    """Item-level logits differ from sum_l log p_l(c_l) by one constant per state: the same ranking."""
    _, model, _ = prepared(PRORec, fast_run_config, bf16=False)
    state = torch.randn(4, model.state_size)
    with torch.no_grad():
        logits = model.code_head.item_logits(state, model.item_codes)  # [4, item_num]
        exact = model.code_head.all_item_scores(state, model.item_codes)
    assert torch.isinf(logits[:, 0]).all() and torch.isfinite(logits[:, 1:]).all()
    gap = logits[:, 1:] - exact[:, 1:]
    torch.testing.assert_close(gap, gap[:, :1].expand_as(gap))


def test_item_id_output_adds_each_items_id_embedding_score_to_training_and_ranking(fast_run_config):
    """With item_id_output, the item-level loss and the ranking both read code logits + state . item embedding;
    the item-level logits still differ from the ranked scores by one constant per state."""
    options = {**DETERMINISTIC, "kd_item_weight": 0, "kd_history_weight": 0, "item_loss_weight": 1.0}
    _, model, (train_data, valid_data, _) = prepared(PRORec, fast_run_config, item_id_output=True, **options)
    model.eval()
    interaction = next(iter(valid_data))[0][:3]
    with torch.no_grad():
        state = model.last_states(interaction)
        codes_only = model.code_head.all_item_scores(state, model.item_codes)
        table = model.sequence_encoder.item_embedding.weight
        torch.testing.assert_close(model.full_sort_predict(interaction), codes_only + state @ table.T)
        batch = next(iter(train_data))
        step = model.generation_step(batch)
        log_p = model.code_head.all_item_scores(step.target_state, model.item_codes) + step.target_state @ table.T
        item_ce = -log_p[:, 1:].log_softmax(-1).gather(1, step.target_items.unsqueeze(1) - 1).mean()
        expected = -step.code_log_probs.mean() + item_ce
        assert model.calculate_loss(batch).item() == pytest.approx(expected.item(), rel=1e-4)


def test_without_code_output_items_are_trained_and_ranked_by_their_id_embedding_alone(fast_run_config):
    """code_output False: the ranking is state . item embedding, the item-level loss a softmax over it, and the
    code head is left out of both (it only trains through the per-level code CE, here off)."""
    options = {**DETERMINISTIC, "kd_item_weight": 0, "kd_history_weight": 0, "code_loss_weight": 0}
    _, model, (train_data, valid_data, _) = prepared(
        PRORec, fast_run_config, item_id_output=True, code_output=False, **options
    )
    model.eval()
    interaction = next(iter(valid_data))[0][:3]
    table = model.sequence_encoder.item_embedding.weight
    with torch.no_grad():
        state = model.last_states(interaction)
        expected = (state @ table.T).index_fill(1, torch.tensor([0]), -torch.inf)
        torch.testing.assert_close(model.full_sort_predict(interaction), expected)
        batch = next(iter(train_data))
        step = model.generation_step(batch)
        logits = step.target_state @ table[1:].T
        expected_loss = F.cross_entropy(logits, step.target_items - 1)
        assert model.calculate_loss(batch).item() == pytest.approx(expected_loss.item(), rel=1e-4)


@pytest.mark.parametrize("options", [{"item_id_output": False}, {"item_id_output": True, "item_loss_weight": 0}])
def test_without_code_output_the_item_id_output_and_item_loss_are_needed(fast_run_config, options):
    with pytest.raises(ValueError, match="code_output: False ranks items by their item-ID embedding alone"):
        prepared(PRORec, fast_run_config, code_output=False, **options)


def test_without_code_input_history_states_do_not_read_the_item_codes(fast_run_config):
    """code_input False: a history item enters by its item-ID embedding alone, so other codes give the same states."""
    _, model, (_, valid_data, _) = prepared(PRORec, fast_run_config, code_input=False, bf16=False)
    assert model.code_embedding is None
    model.eval()
    item_seq = next(iter(valid_data))[0][model.ITEM_SEQ][:3]
    with torch.no_grad():
        states = model.sequence_states(item_seq)
        model.item_codes[1:] = model.item_codes[1:].flip(0)  # every item now carries another item's codes
        torch.testing.assert_close(model.sequence_states(item_seq), states)
        assert torch.equal(states, model.sequence_encoder(item_seq))


def test_code_input_dropout_leaves_whole_digits_out_in_training_only(fast_run_config):
    """Each history item's input is a rescaled sum of a random subset of its digits' vectors; evaluation reads all."""
    _, model, (_, valid_data, _) = prepared(TIGER, fast_run_config, code_input_dropout=0.5, bf16=False)
    encoder_inputs = []
    model.sequence_encoder.forward = lambda item_seq, extra_input=None: encoder_inputs.append(extra_input)
    item_seq = next(iter(valid_data))[0][model.ITEM_SEQ][:2, :1]  # one history item per row
    codes = model.item_codes[item_seq[:, 0]]  # [2, L]
    digit_vectors = model.code_embedding(codes + model.code_starts).detach()  # [2, L, d]
    model.eval()
    model.sequence_states(item_seq)
    torch.testing.assert_close(encoder_inputs[-1][:, 0], digit_vectors.sum(1))
    model.train()
    torch.manual_seed(0)
    sums = set()
    for _ in range(8):
        model.sequence_states(item_seq)
        kept = torch.linalg.lstsq(2 * digit_vectors[0].T, encoder_inputs[-1][0, 0].detach()).solution  # [L]
        torch.testing.assert_close(kept, kept.round(), atol=1e-3, rtol=0)  # every digit in or out, scaled by 2
        sums.add(tuple(kept.round().int().tolist()))
    assert len(sums) > 1  # another subset of digits each time


@pytest.mark.parametrize("options", [{"item_id_input": False}, {"layout": "seq2seq", "item_loss_weight": 0}])
def test_without_code_input_the_item_id_input_is_needed(fast_run_config, options):
    with pytest.raises(ValueError, match="code_input: False leaves the item-ID embedding"):
        prepared(TIGER, fast_run_config, code_input=False, **options)


@pytest.mark.parametrize(
    "model_class, options",
    [(PRORec, {"code_input": False}), (TIGER, {"layout": "seq2seq", "item_loss_weight": 0})],
)
def test_code_input_dropout_needs_code_inputs_in_the_item_causal_layout(fast_run_config, model_class, options):
    """An option that would be silently ignored is an error."""
    with pytest.raises(ValueError, match="code_input_dropout drops the code digits"):
        prepared(model_class, fast_run_config, code_input_dropout=0.5, **options)


@pytest.mark.parametrize(
    "options", [{"item_id_input": False}, {"item_id_input": True, "code_head": "autoregressive", "item_loss_weight": 0}]
)
def test_item_id_output_needs_the_item_id_input_and_the_parallel_head(fast_run_config, options):
    with pytest.raises(ValueError, match="item_id_output scores every item by its item-ID embedding"):
        prepared(TIGER, fast_run_config, item_id_output=True, **options)


@pytest.mark.parametrize(
    "weight, code_weight, smoothing", [(0.0, 1.0, 0.0), (0.7, 1.0, 0.0), (0.7, 0.0, 0.0), (0.7, 1.0, 0.2)]
)
def test_item_loss_adds_the_cross_entropy_of_the_target_among_every_item(
    fast_run_config, weight, code_weight, smoothing
):
    options = {
        **DETERMINISTIC,
        "kd_item_weight": 0,
        "kd_history_weight": 0,
        "item_loss_weight": weight,
        "code_loss_weight": code_weight,
        "item_label_smoothing": smoothing,
    }
    _, model, (train_data, _, _) = prepared(PRORec, fast_run_config, **options)
    batch = next(iter(train_data))
    with torch.no_grad():
        loss = model.calculate_loss(batch)
    expected = expected_generation_loss(model, batch, code_weight, weight, smoothing)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


@torch.no_grad()
def expected_generation_loss(model, batch, code_weight, item_weight, smoothing=0.0):
    """The generation loss computed the long way: per-level code CE, and the CE of the target among every item
    under the exact item scores (which differ from the item-level logits by a per-state constant); with label
    smoothing, that share of the target's mass is spread evenly over the real items (not the padding item 0)."""
    step = model.generation_step(batch)
    log_p = model.code_head.all_item_scores(step.target_state, model.item_codes)[:, 1:].log_softmax(-1)
    target_ce = -log_p.gather(1, step.target_items.unsqueeze(1) - 1).mean()
    item_ce = (1 - smoothing) * target_ce - smoothing * log_p.mean()
    return (-code_weight * step.code_log_probs.mean() + item_weight * item_ce).item()


def test_a_generation_loss_of_zero_weights_is_refused(fast_run_config):
    with pytest.raises(ValueError, match="code_loss_weight 0 leaves no generation loss"):
        prepared(TIGER, fast_run_config, code_loss_weight=0, item_loss_weight=0)
    with pytest.raises(ValueError, match=r"item_label_smoothing must be in \[0, 1\), got 1.0"):
        prepared(TIGER, fast_run_config, item_label_smoothing=1.0)


@pytest.mark.parametrize("layout", BEAM_LAYOUTS, ids=["seq2seq", "autoregressive_head"])
def test_item_loss_needs_the_parallel_head(fast_run_config, layout):
    with pytest.raises(ValueError, match="item_loss_weight > 0 needs layout 'item_causal' with code_head 'parallel'"):
        prepared(TIGER, fast_run_config, **{**layout, "item_loss_weight": 0.5})


def test_warm_start_copies_the_tokenizer_encoder(fast_run_config):
    _, model, _ = prepared(PRORec, fast_run_config)
    for name, value in model.sequence_encoder.state_dict().items():
        assert torch.equal(value, torch.from_numpy(model.artifact.encoder[name])), name
    _, cold, _ = prepared(PRORec, fast_run_config, warm_start=False)
    weight = cold.sequence_encoder.item_embedding.weight
    assert not torch.equal(weight, torch.from_numpy(cold.artifact.encoder["item_embedding.weight"]))


def test_warm_start_from_a_tokenizer_of_another_size_names_the_keys(fast_run_config):
    with pytest.raises(ValueError, match="hidden_size, n_layers, inner_size"):
        prepared(PRORec, fast_run_config, inner_size=64)


def test_stage_one_fusion_mixes_the_two_log_probabilities(fast_run_config):
    _, model, (_, valid_data, _) = prepared(PRORec, fast_run_config, stage_one_fusion=0.25, bf16=False)
    model.eval()
    interaction = next(iter(valid_data))[0]
    with torch.no_grad():
        fused = model.full_sort_predict(interaction)
        codes_only = TIGER.full_sort_predict(model, interaction)
        stage_one = model.stage_one_encoder(interaction[model.ITEM_SEQ])
        stage_one = model.gather_indexes(stage_one, interaction[model.ITEM_SEQ_LEN] - 1)
        stage_one = (stage_one @ model.stage_one_encoder.item_embedding.weight.T).log_softmax(-1)
    real = slice(1, None)
    torch.testing.assert_close(fused[:, real], 0.75 * codes_only[:, real] + 0.25 * stage_one[:, real])
    assert not any(p.requires_grad for p in model.stage_one_encoder.parameters())


def test_sampled_validation_is_a_fixed_sample_per_seed(fast_run_config):
    config = make_config(TIGER, fast_run_config)
    _, valid_data, _ = data_preparation(config, create_dataset(config))

    def users(seed):
        config["seed"] = seed
        sample = sample_validation_users(config, valid_data, 10)
        return sorted(sample._dataset.inter_feat[sample._dataset.uid_field].tolist())

    first = users(2020)
    assert len(first) == 10 and len(set(first)) == 10
    assert users(2020) == first
    assert users(7) != first
    assert sample_validation_users(config, valid_data, 10_000) is valid_data


def test_warmup_then_cosine_to_zero():
    factor = warmup_cosine(total_steps=110, warmup_steps=10)
    assert [factor(step) for step in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0) and factor(500) == pytest.approx(0.0)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 110))


def test_trainer_decays_the_learning_rate_over_the_planned_epochs(fast_run_config):
    config, model, (train_data, valid_data, _) = prepared(TIGER, fast_run_config, epochs=2, warmup_ratio=0.0)
    trainer = model.trainer_class(config, model)
    trainer.fit(train_data, valid_data, saved=False)
    steps = 2 * len(train_data)
    last = warmup_cosine(steps, 1)(steps)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(config["learning_rate"] * last, abs=1e-12)
    assert trainer.scheduler.last_epoch == steps and not math.isnan(trainer.optimizer.param_groups[0]["lr"])


def test_uniform_dropout_drops_at_rate_p_and_keeps_the_expectation():
    dropout = UniformDropout(0.3)
    x = torch.ones(200_000)
    out = dropout(x)
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(dropout.eval()(x), x)


def test_sequence_encoder_uses_uniform_dropout_everywhere(fast_run_config):
    _, model, _ = prepared(TIGER, fast_run_config)
    dropouts = [m for m in model.sequence_encoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(isinstance(m, UniformDropout) for m in dropouts)


@pytest.mark.parametrize("layout", [{}, BEAM_LAYOUTS[0]], ids=["item_causal", "seq2seq"])
def test_item_distillation_state_has_not_seen_the_target_codes(fast_run_config, layout):
    _, model, (train_data, _, _) = prepared(PRORec, fast_run_config, **layout, **DETERMINISTIC)
    model.eval()
    interaction = next(iter(train_data))
    other_targets = interaction[model.POS_ITEM_ID] % (model.n_items - 1) + 1  # a different real item each
    changed = Interaction({**interaction.interaction, model.POS_ITEM_ID: other_targets})
    with torch.no_grad():
        original, moved = model.generation_step(interaction), model.generation_step(changed)
    assert not torch.equal(original.target_items, moved.target_items)
    torch.testing.assert_close(moved.target_state, original.target_state)


def test_warm_started_code_head_fits_each_items_stage_one_embedding(fast_run_config):
    """Each item's summed code vectors are the least-squares fit of its stage-1 embedding (the projection onto what
    sums of code vectors can express, as torch.linalg.lstsq finds it)."""
    _, model, _ = prepared(PRORec, fast_run_config, warm_start_head=True)
    items = torch.from_numpy(model.artifact.encoder["item_embedding.weight"]).double()
    codes, head = model.item_codes, model.code_head
    real = (codes >= 0).all(1)
    incidence = torch.zeros(int(real.sum()), head.output.weight.shape[0], dtype=torch.double)  # item x code row
    incidence.scatter_(1, codes[real] + head.level_starts, 1.0)
    best = incidence @ torch.linalg.lstsq(incidence, items[real], driver="gelsd").solution
    fitted = incidence @ head.output.weight.double()
    error, best_error = (fitted - items[real]).pow(2).sum(), (best - items[real]).pow(2).sum()
    assert error <= 1.01 * best_error and error < 0.9 * items[real].pow(2).sum()
    assert head.output.bias.abs().sum() == 0
    with pytest.raises(ValueError, match="parallel code head"):
        prepared(PRORec, fast_run_config, warm_start_head=True, code_head="autoregressive", item_loss_weight=0)


def test_fusion_weight_auto_takes_the_best_validation_score_and_the_smaller_weight_on_ties(fast_run_config):
    _, model, _ = prepared(PRORec, fast_run_config, stage_one_fusion="auto")
    assert model.stage_one_encoder is not None and model.stage_one_fusion == 0.0
    scores = {0.0: 0.1, 0.1: 0.2, 0.2: 0.3, 0.3: 0.3, 0.4: 0.25}
    chosen = model.choose_on_validation(lambda: scores.get(model.stage_one_fusion, 0.0))
    assert chosen["stage_one_fusion"] == model.stage_one_fusion == 0.2
    _, plain, _ = prepared(PRORec, fast_run_config)
    assert plain.choose_on_validation(lambda: 1.0) is None and plain.stage_one_encoder is None
    with pytest.raises(ValueError, match="stage_one_fusion must be 'auto' or in"):
        prepared(PRORec, fast_run_config, stage_one_fusion="half")
