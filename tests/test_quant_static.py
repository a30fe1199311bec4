"""labkit.quant.static: the per-tensor static quantizer (straight-through rounding, LSQ scale gradient, clipping),
its observers, the refusal of an empty calibration set, and prepare/calibrate on a tiny BERT."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from labkit.quant.static import (
    EmptyCalibrationError,
    Observer,
    StaticInt8Config,
    StaticQuantizer,
    calibrate_static,
    clipping_demo,
    fake_quantize_static,
    freeze_scales,
    learn_scales,
    prepare_static,
    qparams_for_range,
    static_int8_attention,
    static_quantizers,
)

FULL = dict(attention=True, layernorm_inputs=True, outputs=r"output\.dense$")


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


def batch(n: int = 4, t: int = 12, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[: n // 2, t // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_rounding_is_straight_through_inside_the_grid_and_zero_where_clipped():
    scale, zp = torch.tensor(0.1), torch.tensor(128.0)
    x = torch.tensor([-20.0, -1.23, 0.0, 0.57, 12.9, 30.0], requires_grad=True)  # grid: [-12.8, 12.7]
    y = fake_quantize_static(x, scale, zp, 0, 255)
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(y.detach(), torch.tensor([-12.8, -1.2, 0.0, 0.6, 12.7, 12.7]))


def test_lsq_scale_gradient_is_round_minus_x_over_s_inside_and_the_grid_end_outside():
    s = torch.tensor(0.1, requires_grad=True)
    zp = torch.tensor(128.0)
    x = torch.tensor([-1.23, 0.57, 30.0, -20.0])
    g = 0.25
    fake_quantize_static(x, s, zp, 0, 255, grad_scale=g).sum().backward()
    v = x / 0.1
    inside = (torch.round(v) - v)[:2]
    expected = (inside.sum() + (255 - 128) + (0 - 128)) * g  # d x_hat / d s per element, times LSQ's g
    assert math.isclose(float(s.grad), float(expected), rel_tol=1e-5)


def test_gradient_scaling_leaves_the_forward_bit_for_bit():
    x = torch.randn(1000) * 3
    s = torch.tensor(0.0371, requires_grad=True)
    a = fake_quantize_static(x, s, torch.tensor(7.0), 0, 255, grad_scale=1e-3)
    b = fake_quantize_static(x, s.detach(), torch.tensor(7.0), 0, 255)
    assert torch.equal(a.detach(), b)


def test_quantizer_matches_quantize_linear_formula_with_division():
    x = torch.randn(4096) * 2
    q = StaticQuantizer("uint8")
    q(x)
    q.finish_calibration()
    s, z = q.scale.detach(), q.zero_point
    codes = torch.clamp(torch.round(x / s) + z, 0, 255)
    assert torch.equal(q(x).detach(), (codes - z) * s)


def test_observers_minmax_percentile_mse_on_a_heavy_tail():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.0).sample((200_000,))  # heavy tails: min-max spends the grid on a few
    ranges = {}
    for kind in ("minmax", "percentile", "mse"):
        obs = Observer(kind)
        obs.update(x)
        ranges[kind] = obs.range(-128, 127, symmetric=True)
    top = float(x.max())
    assert ranges["minmax"][1] == pytest.approx(top)
    assert ranges["percentile"][1] < top / 2 and ranges["mse"][1] < top

    def err(r):
        s, z = qparams_for_range(*r, -128, 127, True)
        return float(((fake_quantize_static(x, s, z, -128, 127) - x) ** 2).mean())

    assert err(ranges["mse"]) < err(ranges["minmax"])  # the least squared error of the clip ranges it tried


def test_unknown_observer_is_refused():
    with pytest.raises(ValueError, match="observer='histogram'"):
        Observer("histogram")


def test_clipping_demo_shows_values_beyond_the_range_clip_to_its_ends():
    q = StaticQuantizer("uint8")
    q(torch.linspace(-1.0, 1.0, 101))
    q.finish_calibration()
    lo, hi = q.clip_range()
    demo = clipping_demo(q, [-5.0, 0.5, 5.0])
    assert demo["clipped"] == [True, False, True]
    assert demo["outputs"][0] == pytest.approx(lo) and demo["outputs"][2] == pytest.approx(hi)
    assert lo == pytest.approx(-1.0, abs=0.01) and hi == pytest.approx(1.0, abs=0.01)


def test_prepare_and_calibrate_a_whole_integer_encoder():
    model = prepare_static(tiny_bert(), StaticInt8Config(layers=r"^bert\.(encoder|pooler)\.", **FULL))
    summary = calibrate_static(model, [batch()])
    qs = static_quantizers(model)
    # per layer: q/k/v share 1 input quantizer, attn-out in + out, ffn in, ffn-out in + out, 4 attention, 2 LN;
    # plus the pooler's input
    assert summary["rows"] == 4 and len(qs) == 2 * (1 + 2 + 1 + 2 + 4 + 2) + 1
    assert all(q.calibrated and q.mode == "quantize" and float(q.scale) > 0 for q in qs.values())
    probs = qs["bert.encoder.layer.0.attention.self.static_quantizers.probs"]
    assert int(probs.zero_point) == 0 and probs.dtype == "uint8"
    with torch.no_grad():
        out = model(**batch(seed=1)).logits
    assert torch.isfinite(out).all()


def test_empty_calibration_is_refused():
    model = prepare_static(tiny_bert(), StaticInt8Config())
    with pytest.raises(EmptyCalibrationError, match="no rows"):
        calibrate_static(model, [])
    empty = {k: v[:0] for k, v in batch().items()}
    with pytest.raises(EmptyCalibrationError, match="no rows"):
        calibrate_static(model, [empty])


def test_ptq_freezes_and_qat_learns_the_same_scales():
    model = prepare_static(tiny_bert(), StaticInt8Config(**FULL))
    calibrate_static(model, [batch()])
    before = {n: float(q.scale) for n, q in static_quantizers(model).items()}
    freeze_scales(model)
    assert not any(q.scale.requires_grad for q in static_quantizers(model).values())
    scales = learn_scales(model)
    opt = torch.optim.SGD(scales, lr=1.0)
    model.train()
    out = model(**batch(), labels=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()
    assert all(s.grad is not None for s in scales)
    assert sum(float(s.grad.abs()) > 0 for s in scales) > len(scales) // 2
    opt.step()
    after = {n: float(q.scale.detach()) for n, q in static_quantizers(model).items()}
    assert after != before


def test_learn_scales_needs_calibration_first():
    model = prepare_static(tiny_bert(), StaticInt8Config())
    with pytest.raises(ValueError, match="calibrate_static first"):
        learn_scales(model)


def test_attention_takes_a_boolean_or_an_additive_mask_alike():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    keep = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    keep[0, ..., 3:] = False
    additive = torch.zeros(2, 1, 5, 5).masked_fill(~keep, torch.finfo(torch.float32).min)
    module = torch.nn.Module()
    a, _ = static_int8_attention(module, q, k, v, keep)
    b, _ = static_int8_attention(module, q, k, v, additive)
    assert torch.allclose(a, b, atol=1e-6)


def test_prepare_twice_is_refused():
    model = prepare_static(tiny_bert(), StaticInt8Config())
    with pytest.raises(ValueError, match="already"):
        prepare_static(model, StaticInt8Config())


def test_observe_mode_passes_activations_through():
    base = tiny_bert()
    model = prepare_static(copy.deepcopy(base), StaticInt8Config(**FULL))
    for q in static_quantizers(model).values():
        q.mode = "observe"
    with torch.no_grad():
        a = model(**batch()).logits
    assert torch.isfinite(a).all()
