"""The layer picker, driven headlessly: presets, filter, count and share, refusal of an empty selection,
and its value reaching exactly the chosen modules in labkit's quantization calls."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import traitlets

from labkit.models import build_from_shape
from labkit.quant.selection import EmptySelectionError
from labkit.widgets import LayerPicker
from labkit.widgets.layer_picker import ALL_LINEAR, CUSTOM, FEED_FORWARD, LEAST_SENSITIVE, NONE

FF = [f"model.layers.{b}.mlp.{r}_proj" for b in (0, 1) for r in ("gate", "up", "down")]


def _tiny(tied: bool = False):
    model = build_from_shape("tiny-llama", dtype=torch.float32, device="cpu")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
        model.config.tie_word_embeddings = True
    return model


@pytest.fixture
def model():
    return _tiny()


def test_default_preset_is_feed_forward_with_count_and_share(model):
    picker = LayerPicker(model)
    assert picker.preset.value == FEED_FORWARD
    assert picker.value == FF
    ff_params = sum(dict(model.named_modules())[n].weight.numel() for n in FF)
    total = sum(p.numel() for p in model.parameters())
    assert picker.selected_params == ff_params
    assert picker.share == pytest.approx(ff_params / total)
    assert "<b>6</b> of 15" in picker.status.value
    assert f"{ff_params / total:.1%}" in picker.status.value


def test_presets_all_and_none(model):
    picker = LayerPicker(model)
    picker.preset.value = ALL_LINEAR
    assert len(picker.value) == 15 and picker.value[-1] == "lm_head"
    picker.preset.value = NONE
    assert picker.value == []
    assert "Refused" in picker.status.value
    with pytest.raises(EmptySelectionError, match="empty"):
        picker.selection()


def test_tied_head_is_left_out_of_presets_and_flagged_when_ticked():
    picker = LayerPicker(_tiny(tied=True), preset=ALL_LINEAR)
    assert "lm_head" not in picker.value and len(picker.value) == 14
    picker.checkboxes["lm_head"].value = True
    assert picker.preset.value == CUSTOM
    assert "lm_head" in picker.value
    assert "tied to the token embedding" in picker.status.value


def test_filter_narrows_and_bad_filters_are_refused(model):
    picker = LayerPicker(model, preset=ALL_LINEAR)
    picker.filter.value = r"layers\.1\..*(q|k)_proj"
    assert picker.value == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"]
    assert picker.checkboxes["model.layers.0.mlp.up_proj"].disabled
    picker.filter.value = "no-such-layer"
    assert picker.value == []
    with pytest.raises(EmptySelectionError, match="matches none"):
        picker.selection()
    picker.filter.value = "mlp.("
    assert picker.value == [] and "not a valid regular expression" in picker.status.value
    picker.filter.value = ""
    assert len(picker.value) == 15


def test_least_sensitive_needs_a_table_then_picks_the_lowest(model):
    picker = LayerPicker(model)
    picker.preset.value = LEAST_SENSITIVE
    assert picker.value == []
    assert "needs a sensitivity table" in picker.status.value
    names = list(picker.layers["name"])
    table = pd.DataFrame({"name": names, "kl": [float(i) for i in range(len(names))][::-1]})
    picker.set_sensitivity(table)
    picker.percent.value = 20  # ceil(15 * 0.2) = 3 least damaging: the last three names
    assert picker.value == names[-3:]
    with pytest.raises(ValueError, match="does not have"):
        picker.set_sensitivity(pd.DataFrame({"name": ["other.model.layer"], "kl": [0.0]}))


def test_value_from_code_and_unknown_names(model):
    picker = LayerPicker(model)
    picker.filter.value = "mlp"
    picker.value = ["lm_head", "model.layers.0.self_attn.v_proj"]
    assert picker.value == ["model.layers.0.self_attn.v_proj", "lm_head"]  # model order
    assert picker.preset.value == CUSTOM and picker.filter.value == ""
    assert picker.checkboxes["lm_head"].value and not picker.checkboxes[FF[0]].value
    with pytest.raises(traitlets.TraitError, match="not Linear layers"):
        picker.value = ["model.layers.9.mlp.up_proj"]
    picker.checkboxes[FF[0]].value = True
    assert FF[0] in picker.value


def test_selection_reaches_exactly_the_chosen_modules(model):
    from labkit.quant.ptq import quantize_weight_only_int8
    from labkit.quant.qat import prepare_qat
    from labkit.quant.report import fake_quantized_modules, int8_modules

    picker = LayerPicker(model)
    picker.filter.value = r"layers\.0\.|lm_head"
    picker.checkboxes["lm_head"].value = True
    chosen = picker.selection()
    assert chosen == FF[:3] + ["lm_head"]
    import copy

    ptq = quantize_weight_only_int8(copy.deepcopy(model), chosen)
    assert int8_modules(ptq) == chosen
    qat = prepare_qat(copy.deepcopy(model), chosen)
    assert fake_quantized_modules(qat) == chosen
