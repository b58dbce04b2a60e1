"""The `bf16` option: 'auto' follows the hardware, an explicit value is kept, anything else is refused."""

import logging

import pytest
import torch

from recbole_prorec.precision import resolve_bf16


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(False, False, False), (True, False, True), (False, True, True)])
def test_auto_turns_bf16_on_only_where_the_cpu_has_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_bf16("auto", torch.device("cpu")) is expected
    assert resolve_bf16("AUTO", "cpu") is expected


def test_explicit_true_is_kept_but_warns_without_native_bf16(monkeypatch, caplog):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="recbole_prorec.precision"):
        assert resolve_bf16(True, "cpu") is True
    assert "without native bf16" in caplog.text
    assert resolve_bf16(False, "cpu") is False


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_other_values_are_refused_naming_the_key(value):
    with pytest.raises(ValueError, match="bf16: expected true, false or auto"):
        resolve_bf16(value, "cpu")
