"""Fast, checked perplexity for 8-bit variants, the FP8 and labkit-kernel variants, and their verdicts over seeds.

The w8a8 perplexity path (an exact float32 emulation of torchao's INT8 arithmetic) must give the converted model's
logits, and a broken emulation must fail its variant; FP8 rows say when they are fake-quantized; qat-w8-labkit keeps
qat-w8's codes; the 1% verdicts of the new variants are judged on the mean over seeds against the spread."""

from __future__ import annotations

import pytest
import torch

from labkit.experiments import hybrid as hy
from labkit.models import build_from_shape
from labkit.quant import emulate
from labkit.quant.ptq import quantize_dynamic_int8



def _cfg(**kw):
    base = dict(seq_len=32, train_steps=2, train_batch=2, eval_batch=4, prefill_lengths=(32,), prefill_repeat=1,
                decode_prompt=8, decode_tokens=2, ppl_path="emulated", dtype="bfloat16")  # the bf16 model of a GPU run
    return hy.HybridConfig.for_profile("quick", "cpu", **(base | kw))


def _forgets_activation_quantization(self, x):
    """A plausible slip: INT8 weights, float activations (weight-only numbers, not the w8a8 model's)."""
    y = (x.float() @ self.codes_t * self.weight_scale).to(x.dtype)
    return y if self.bias is None else y + self.bias


def test_emulated_w8a8_gives_the_converted_models_logits(tiny, blocks):
    test, _ = blocks
    real = quantize_dynamic_int8(_bf16(tiny), hy.FEED_FORWARD)
    fast, names = emulate.emulated_int8_copy(real)
    assert len(names) == 6 and all(isinstance(fast.get_submodule(n), emulate.EmulatedInt8DynamicLinear) for n in names)
    check = emulate.logits_agreement(fast, real, test)
    assert check["ok"] and check["logit_rel_diff"] <= 1e-6 and check["top1_agreement"] == 1.0, check
    assert check["tolerance"] == {"nll_rel": emulate.NLL_REL_TOL, "top1_min": emulate.TOP1_MIN,
                                  "logit_rel": emulate.LOGIT_REL_TOL}


def _bf16(model):
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)


def test_the_run_checks_the_fast_path_and_records_the_check(tiny, blocks):
    test, train = blocks
    res = hy.run_hybrid(_cfg(variants=("base", "ptq-w8a8")), tiny, test_blocks=test, train_blocks=train,
                        progress=False, log=None, strict=True)
    row = res.rows[1]
    assert row["ppl_path"].startswith("emulated") and row["ppl_check"]["ok"]
    assert row["ppl_check"]["tolerance"]["logit_rel"] == emulate.LOGIT_REL_TOL
    assert row["ppl_check"]["real_s"] > 0 and row["ppl_check"]["fast_s"] > 0  # one eval batch timed both ways
    paths = hy.ppl_paths_table(res.rows)
    assert list(paths.index) == ["base", "ptq-w8a8"] and paths.loc["ptq-w8a8", "check_ok"] == True  # noqa: E712
    assert "logit_rel 0.002" in paths.loc["ptq-w8a8", "tolerance"]
    real = hy.run_hybrid(_cfg(variants=("ptq-w8a8",), ppl_path="real"), tiny, test_blocks=test,
                         train_blocks=train, progress=False, log=None, strict=True).rows[0]
    assert "ppl_check" not in real and real["ppl_path"].startswith("the converted model")
    assert abs(real["ppl"] / row["ppl"] - 1) < 1e-6  # the two paths give the same perplexity


def test_a_broken_fast_path_fails_its_variant(tiny, blocks, monkeypatch):
    test, train = blocks
    monkeypatch.setattr(emulate.EmulatedInt8DynamicLinear, "forward", _forgets_activation_quantization)
    res = hy.run_hybrid(_cfg(variants=("base", "ptq-w8a8")), tiny, test_blocks=test, train_blocks=train,
                        progress=False, log=None)
    row = res.rows[1]
    assert "ppl" not in row and "fast perplexity path disagrees" in row["error"], row
    assert row["ppl_check"]["ok"] is False and row["ppl_check"]["logit_rel_diff"] > emulate.LOGIT_REL_TOL


def test_auto_path_is_emulated_on_a_gpu_and_real_on_a_cpu():
    from labkit.experiments.hybrid.evaluate import resolve_ppl_path

    assert resolve_ppl_path("auto", "cuda") == "emulated" and resolve_ppl_path("auto", "cpu") == "real"
    with pytest.raises(ValueError, match="ppl_path"):
        hy.run_hybrid(_cfg(variants=("base",), ppl_path="fast"), build_from_shape("tiny-llama"),
                      test_blocks=torch.zeros(1, 8, dtype=torch.long), train_blocks=torch.zeros(1, 8, dtype=torch.long))


@pytest.mark.slow
def test_fp8_and_labkit_rows_exist_are_labelled_and_checked(tiny, blocks):
    test, train = blocks
    variants = ("base", "base-ft", "qat-w8", "ptq-fp8", "ft-ptq-fp8", "qat-fp8", "qat-w8-labkit")
    res = hy.run_hybrid(_cfg(variants=variants), tiny, test_blocks=test, train_blocks=train, progress=False,
                        log=None, strict=True)
    rows = {r["variant"]: r for r in res.rows}
    assert list(rows) == list(variants)
    for name in ("ptq-fp8", "ft-ptq-fp8", "qat-fp8"):
        r = rows[name]
        assert r["mode"] == "fp8" and r["fp8_numerics"] == "fake" and "fake quantization" in r["ppl_path"]
        assert r["fp8_layers"] == 6 and r["int8_layers"] == 0 and r["checks_ok"]
        assert res.checks[name]["fp8_matches_selection"] and res.checks[name]["fp8_numerics"] == "fake"
    assert res.checks["qat-fp8"]["fake_quantized_match"] and len(res.losses["qat-fp8"]) == 2
    lab = rows["qat-w8-labkit"]
    assert lab["ppl_check"]["ok"] and "torchao" in lab["ppl_check"]["against"] and "labkit" in lab["ppl_path"]
    assert abs(lab["ppl"] / rows["qat-w8"]["ppl"] - 1) < 1e-3  # the same INT8 codes as qat-w8, not trained again
    assert lab["kernel_check"]["ok"] and "interpreter" in lab["kernel_check"]["kernel"]  # conftest: CPU Triton
    assert "qat-w8-labkit" not in res.losses
    targets = {t["target"] for t in hy.targets({"rows": res.rows})}
    assert "QAT (fp8, fake-quantized) perplexity within 1% of the equally fine-tuned float model" in targets
    assert "QAT (w8, labkit kernel) perplexity within 1% of the equally fine-tuned float model" in targets


def test_fp8_fake_quantizer_passes_the_gradient_straight_through():
    """QAT's gradient through an FP8 fake-quantized Linear is the float gradient at the rounded weights and inputs.
    A backward through the float8 cast would round the gradient itself to e4m3 without a scale: a weight
    gradient times the weight's ~1e-4 scale underflows to zero and the layer never trains."""
    from labkit.quant.fp8 import prepare_fp8_qat

    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False))
    with torch.no_grad():
        layer[0].weight.copy_(torch.randn(32, 64, generator=g) * 0.02)  # an LLM's weight scale
    prepare_fp8_qat(layer)
    fq = layer[0]
    x = torch.randn(8, 64, generator=g, requires_grad=True)
    up = torch.randn(8, 32, generator=g) * 1e-3  # the gradient arriving from the loss
    (fq(x) * up).sum().backward()
    with torch.no_grad():
        x_q, w_q = fq.activation_fake_quantizer(x), fq.weight_fake_quantizer(fq.weight)
    assert not torch.equal(w_q, fq.weight)  # the forward does round to FP8
    torch.testing.assert_close(fq.weight.grad, up.T @ x_q, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(x.grad, up @ w_q, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_qat_fp8_trains_the_selected_layers_and_the_fp8_convert_keeps_the_trained_weights(tiny, blocks, monkeypatch):
    """After the same short fine-tune, qat-fp8's selected weights moved about as far as base-ft's, and the FP8
    convert of the GPU path (its hardware check mocked: the conversion itself runs anywhere) holds exactly the
    FP8 rounding of the trained weights that the fake-quantized (CPU) path evaluates."""
    import torchao.quantization.quant_api as quant_api

    from labkit.experiments.hybrid import pipeline

    _, train = blocks
    cfg = _cfg(train_steps=3)
    sel = [n for n, _ in tiny.named_modules() if n.endswith(("gate_proj", "up_proj", "down_proj"))]
    master = dict(tiny.named_modules())
    ft, _ = hy.make_variant(tiny, "base-ft", cfg, sel, train, progress=False)
    fake, info = hy.make_variant(tiny, "qat-fp8", cfg, sel, train, progress=False)
    assert info["fp8_numerics"] == "fake" and len(info["losses"]) == 3
    fake_mods, ft_mods = dict(fake.named_modules()), dict(ft.named_modules())
    for name in sel:
        w0 = master[name].weight.to(torch.bfloat16).float()
        moved_qat = (fake_mods[name].weight.float() - w0).norm()
        moved_ft = (ft_mods[name].weight.float() - w0).norm()
        assert moved_qat > 0.5 * moved_ft > 0, (name, float(moved_qat), float(moved_ft))

    monkeypatch.setattr(pipeline, "_fp8_numerics", lambda device: "real")
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    real, info = hy.make_variant(tiny, "qat-fp8", cfg, sel, train, progress=False)
    assert info["fp8_numerics"] == "real" and info["checks"]["fp8_layers"] == len(sel)
    real_mods = dict(real.named_modules())
    for name in sel:
        converted = real_mods[name].weight.dequantize()
        with torch.no_grad():
            expected = fake_mods[name].weight_fake_quantizer(fake_mods[name].weight)
        assert converted.dtype == expected.dtype == torch.bfloat16
        assert torch.equal(converted, expected), name


def test_a_variant_without_the_model_it_starts_from_is_refused(tiny, blocks):
    test, train = blocks
    with pytest.raises(ValueError, match="'qat-w8-labkit' starts from 'qat-w8'"):
        hy.run_hybrid(_cfg(variants=("base", "qat-w8-labkit")), tiny, test_blocks=test, train_blocks=train)
    from labkit.experiments.hybrid.config import needed_variants

    assert needed_variants(["qat-w8-labkit", "ft-ptq-fp8"]) == ["base-ft", "qat-w8", "ft-ptq-fp8", "qat-w8-labkit"]


def _seed(ft: float, **ppl: float) -> list[dict]:
    rows = [{"variant": "base-ft", "ppl": ft, "method": "float"}]
    return rows + [{"variant": v.replace("_", "-"), "ppl": p, "method": "qat", "fp8_numerics": "real"}
                   for v, p in ppl.items()]


@pytest.mark.parametrize("variant, words", [("qat_fp8", "fp8"), ("qat_w8_labkit", "w8, labkit kernel")])
def test_new_variants_get_the_1_percent_verdict_over_seeds(variant, words):
    def judge(pairs):
        runs = [_seed(ft, **{variant: q}) for ft, q in pairs]
        found = [t for t in hy.targets({"rows": runs[0], "seed_rows": dict(enumerate(runs))})
                 if t.get("variant") == variant.replace("_", "-")]
        assert len(found) == 1 and found[0]["target"].startswith(f"QAT ({words}) perplexity within 1%")
        return found[0]

    met = judge([(14.40, 14.45), (14.38, 14.44), (14.42, 14.46)])          # +0.35, +0.42, +0.28 %: clearly < 1 %
    assert met["verdict"] == "met" and met["met"] is True and met["seeds"] == 3 and "+-" in met["measured"]
    missed = judge([(14.40, 14.70), (14.38, 14.69), (14.42, 14.71)])       # ~ +2.1 % each
    assert missed["verdict"] == "missed" and missed["met"] is False
    noisy = judge([(14.40, 14.40), (14.38, 14.70), (14.42, 14.42)])        # 0, +2.2, 0 %: mean 0.74 +- 1.3
    assert noisy["verdict"] == "within noise" and noisy["met"] is None
    one = judge([(14.40, 14.45)])
    assert one["verdict"] == "no verdict"


def _fake_run_hybrid(asked: list, stop_after: int | None, fail: tuple[str, ...] = ()):
    """run_hybrid without a model: rows as they 'finish', Ctrl-C after `stop_after` rows; `fail` names variants that
    fail on every seed, or (variant, seed) pairs that fail on that seed only."""
    from labkit.experiments.hybrid import HybridResult

    def fake(cfg, model, tokenizer, on_row=None, **kw):
        asked.append((cfg.seed, cfg.variants))
        res = HybridResult(config={}, selected=["x"])
        for name in cfg.variants:
            if len(res.rows) == stop_after:
                raise KeyboardInterrupt
            row = {"variant": name, "method": "float", "ppl": 10.0, "prefill": [], "seed": cfg.seed}
            failed = name in fail or (name, cfg.seed) in fail
            res.rows.append(row | ({"error": "boom"} if failed else {}))
            res.checks[name] = {"ok": not failed}
            if on_row is not None:
                on_row(res.rows[-1], res)
        return res
    return fake


def test_resume_makes_the_model_a_variant_starts_from_again(tmp_path, monkeypatch):
    import json

    import labkit.experiments.hybrid.bench as bench
    from labkit.bench import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "load_causal_lm", lambda *a, **k: (object(), object()))
    asked: list = []
    out = tmp_path / "h" / "result.json"
    argv = ["hybrid", "--profile", "quick", "--shape", "none", "--no-sensitivity", "--out", str(out),
            "--variants", "base,base-ft,qat-w8,ptq-fp8,qat-w8-labkit"]
    monkeypatch.setattr(bench, "run_hybrid", _fake_run_hybrid(asked, stop_after=3))
    assert main(argv) == 130
    monkeypatch.setattr(bench, "run_hybrid", _fake_run_hybrid(asked, stop_after=None))
    assert main(argv + ["--resume"]) == 0
    assert asked[-1] == (0, ("qat-w8", "ptq-fp8", "qat-w8-labkit"))  # qat-w8 again: qat-w8-labkit converts its model
    data = json.loads(out.read_text())
    assert data["status"] == "complete"
    assert [r["variant"] for r in data["rows"]] == ["base", "base-ft", "qat-w8", "ptq-fp8", "qat-w8-labkit"]


def test_a_failed_variant_does_not_cost_the_other_variants_their_seeds(tmp_path, monkeypatch):
    import json

    import labkit.experiments.hybrid.bench as bench
    from labkit.bench import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "load_causal_lm", lambda *a, **k: (object(), object()))
    asked: list = []
    monkeypatch.setattr(bench, "run_hybrid", _fake_run_hybrid(asked, stop_after=None, fail=("qat-fp8",)))
    out = tmp_path / "h" / "result.json"
    assert main(["hybrid", "--profile", "quick", "--shape", "none", "--no-sensitivity", "--out", str(out),
                 "--variants", "base,base-ft,qat-w8a8,qat-fp8", "--seeds", "0,1,2"]) == 1  # a failed run
    assert asked[1:] == [(1, ("base-ft", "qat-w8a8")), (2, ("base-ft", "qat-w8a8"))]
    data = json.loads(out.read_text())
    assert data["status"] == "failed" and sorted(data["seed_rows"]) == ["0", "1", "2"]


def test_a_variant_failing_on_a_later_seed_fails_the_run_and_resume_measures_that_seed_again(tmp_path, monkeypatch):
    import json

    import labkit.experiments.hybrid.bench as bench
    from labkit.bench import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "load_causal_lm", lambda *a, **k: (object(), object()))
    asked: list = []
    monkeypatch.setattr(bench, "run_hybrid", _fake_run_hybrid(asked, stop_after=None, fail=(("qat-w8a8", 2),)))
    out = tmp_path / "h" / "result.json"
    argv = ["hybrid", "--profile", "quick", "--shape", "none", "--no-sensitivity", "--out", str(out),
            "--variants", "base,base-ft,qat-w8a8", "--seeds", "0,1,2"]
    assert main(argv) == 1  # seed 2's qat-w8a8 failed: not a complete run, so no reference can be made of it
    data = json.loads(out.read_text())
    assert data["status"] == "failed" and "seed 2" in data["reason"] and "qat-w8a8: boom" in data["reason"]
    monkeypatch.setattr(bench, "run_hybrid", _fake_run_hybrid(asked, stop_after=None))
    assert main(argv + ["--resume"]) == 0
    assert asked[3:] == [(2, ("base-ft", "qat-w8a8"))]  # only the seed that failed is measured again
    data = json.loads(out.read_text())
    assert data["status"] == "complete" and not any("error" in r for r in data["seed_rows"]["2"])


def test_the_kernel_check_catches_a_kernel_that_disagrees_with_the_prefill_path(tiny, monkeypatch):
    from torchao.quantization import quantize_

    import labkit.quant.int8_linear as int8_linear
    from labkit.experiments.hybrid.evaluate import kernel_decode_check
    from labkit.quant.int8_kernel import triton_available

    if not triton_available("cpu")[0]:
        pytest.skip("Triton's CPU interpreter is not on (tests/conftest.py turns it on where triton is installed)")
    import copy

    from torchao.quantization import Int8WeightOnlyConfig, PerRow

    def mlp(m, fqn):
        return fqn.endswith("_proj") and ".mlp." in fqn

    reference = _bf16(tiny)  # torchao INT8 weight-only: the model labkit's layers take their codes from
    quantize_(reference, Int8WeightOnlyConfig(granularity=PerRow()), filter_fn=mlp)
    model = copy.deepcopy(reference)
    quantize_(model, int8_linear.LabkitInt8WeightOnlyConfig(), filter_fn=mlp)
    ids = torch.randint(0, 256, (32,), generator=torch.Generator().manual_seed(1))
    good = kernel_decode_check(model, ids, tokens=8)  # raised to 16: the forward over 17 takes the prefill path
    assert good["ok"] is True and good["tokens"] == 17 and "forward" in good["against"], good
    paired = kernel_decode_check(model, ids, tokens=8, reference=reference)  # against torchao's own decode
    assert paired["ok"] is True and "decode" in paired["against"], paired
    assert paired["reference_decode_vs_forward"]["top1_agreement"] > 0.9  # the decode-vs-prefill floor, recorded
    real_mm = int8_linear.int8_weight_only_mm
    # a plausible kernel bug: split-K partial sums added twice
    monkeypatch.setattr(int8_linear, "int8_weight_only_mm", lambda x, w, s: real_mm(x, w, s) * 2)
    bad = kernel_decode_check(model, ids, tokens=16)
    assert bad["ok"] is False and bad["logit_rel_diff"] > good["logit_rel_diff"], bad
    bad = kernel_decode_check(model, ids, tokens=16, reference=reference)
    assert bad["ok"] is False and bad["logit_rel_diff"] > paired["logit_rel_diff"], bad


def test_bench_refuses_a_variant_without_its_parent_before_any_work(tmp_path, monkeypatch, capsys):
    import labkit.experiments.hybrid.bench as bench
    from labkit.bench import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "load_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_:
        main(["hybrid", "--profile", "quick", "--shape", "none", "--variants", "base,qat-w8-labkit"])
    assert exit_.value.code == 2
    assert "qat-w8-labkit starts from qat-w8's model; add qat-w8" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
