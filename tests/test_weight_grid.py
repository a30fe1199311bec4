"""The 4-bit origin of the embedded SmolLM2 is detected and measured (labkit.quant.grid), and said (models.baseline_note)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.models import baseline_note
from labkit.quant.grid import (
    describe_weight_grid,
    distinct_per_block,
    int8_rounding_error,
    q4_1_round,
    weight_grid_table,
)


def _model(four_bit: bool) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 96))
    if four_bit:
        with torch.no_grad():
            for m in model:
                if isinstance(m, nn.Linear):
                    m.weight.copy_(q4_1_round(m.weight))
    return model


def test_distinct_per_block():
    w = torch.arange(64.0).reshape(1, 64)
    assert distinct_per_block(w).tolist() == [32, 32]
    assert distinct_per_block(torch.zeros(3, 40)).tolist() == [1, 1, 1]  # ragged tail dropped
    with pytest.raises(ValueError, match="block"):
        distinct_per_block(torch.zeros(2, 8))


def test_q4_1_round_puts_every_block_on_16_levels_and_int8_error_is_as_theory():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    assert distinct_per_block(q4_1_round(w)).max() <= 16
    assert distinct_per_block(w).min() == 32
    # uniform rounding on a step of absmax/127.5: rms error = step / sqrt(12); relative to the row's rms
    expected = float(((w.abs().amax(-1) / 127.5) / 12**0.5).pow(2).mean().sqrt() / w.pow(2).mean().sqrt())
    assert int8_rounding_error(w) == pytest.approx(expected, rel=0.1)


def test_weight_grid_table_tells_a_4bit_model_from_a_float_one():
    four, flt = weight_grid_table(_model(True)), weight_grid_table(_model(False))
    assert list(four["name"]) == ["0", "2"] and (four["max_distinct"] <= 16).all() and (flt["max_distinct"] == 32).all()
    # INT8 adds an error far smaller than the 4-bit rounding such weights went through
    assert (four["int8_error"] < four["q4_error_random"] / 4).all()
    assert "4-bit grid" in describe_weight_grid(four) and "a float model" in describe_weight_grid(flt)
    assert len(weight_grid_table(_model(True), max_rows=8)) == 2


def test_baseline_note():
    note = baseline_note("smollm2-135m")
    assert "Q4_1" in note and "4-bit" in note and "ft-ptq" in note and "HuggingFaceTB/" in note
    assert baseline_note("smollm2") == note
    assert baseline_note("HuggingFaceTB/SmolLM2-135M-Instruct") == "" and baseline_note("llama-2-7b") == ""
