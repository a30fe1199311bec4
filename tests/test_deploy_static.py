"""labkit.deploy.qdq_export on a tiny BERT: the QDQ graph carries the model's INT8 weights and scales bit for
bit, a file whose scales are not its model's is refused naming the layer, bad scales are refused at export,
the runtimes clip like the model, and ONNX Runtime (and OpenVINO where installed) agree with PyTorch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from labkit.deploy.onnx_export import DeployError  # noqa: E402
from labkit.deploy.qdq_export import (  # noqa: E402
    ScaleMismatchError,
    check_artifact,
    export_static_qdq,
    fused_ops,
    load_static_artifact,
)
from labkit.quant.static import (  # noqa: E402
    StaticInt8Config,
    calibrate_static,
    clipping_demo,
    prepare_static,
    static_quantizers,
)

FULL = dict(attention=True, layernorm_inputs=True, outputs=r"output\.dense$", weight_bits=7)


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    model = BertForSequenceClassification(cfg).eval()
    model.classifier.weight.data.normal_(0, 2.0)  # a head that separates rows, so labels are not all one class
    return model


def batch(n: int = 16, t: int = 12, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[: n // 2, t // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def static_model(seed: int = 0, **kw):
    model = prepare_static(tiny_bert(seed), StaticInt8Config(**(kw or FULL)))
    calibrate_static(model, [batch(seed=10), batch(seed=11)])
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = static_model()
    path = tmp_path_factory.mktemp("static") / "static_qdq.onnx"
    return model, path, export_static_qdq(model, path)


def test_export_holds_every_int8_weight_and_scale_bit_for_bit(exported):
    import onnx
    from onnx import numpy_helper

    model, path, info = exported
    assert info["check"]["identical"] and info["int8_linears"] == 2 * 6 + 1
    assert info["activation_quantizers"] == len(static_quantizers(model))
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    codes = inits["bert.encoder.layer.0.output.dense.weight_int8"]
    assert codes.dtype == np.int8 and codes.min() >= -64 and codes.max() <= 63  # 7-bit codes in INT8 storage
    assert check_artifact(path, model)["identical"]


def test_a_file_whose_scales_are_not_its_models_is_refused_naming_the_layer(exported):
    model, path, _ = exported
    other = copy.deepcopy(model)
    name = "bert.encoder.layer.1.attention.self.static_quantizers.probs"
    with torch.no_grad():
        static_quantizers(other)[name].scale.mul_(1.01)
    with pytest.raises(ScaleMismatchError, match=name.replace(".", r"\.")):
        check_artifact(path, other)
    with pytest.raises(ScaleMismatchError, match=name.replace(".", r"\.")):
        load_static_artifact(path, other)


def test_a_file_with_other_weights_is_refused_naming_the_layer(exported):
    model, path, _ = exported
    other = copy.deepcopy(model)
    with torch.no_grad():  # one weight that is not its row's largest: the codes change, the scales do not
        w = other.bert.encoder.layer[0].intermediate.dense.weight
        j = int(w[0].abs().argmin())
        w[0, j] = w[0].abs().max() * 0.5
    with pytest.raises(ScaleMismatchError, match=r"bert\.encoder\.layer\.0\.intermediate\.dense"):
        check_artifact(path, other)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_bad_scales_are_refused_at_export_naming_the_layer(tmp_path, bad):
    model = static_model()
    name = "bert.encoder.layer.0.output.dense.output_quantizer"
    with torch.no_grad():
        static_quantizers(model)[name].scale.fill_(bad)
    with pytest.raises(DeployError, match=name.replace(".", r"\.")):
        export_static_qdq(model, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_ort_agrees_with_pytorch_and_fuses_the_qdq_pairs(exported):
    model, path, _ = exported
    clf = load_static_artifact(path, model, runtime="ort")
    x = batch(n=32, seed=3)
    with torch.no_grad():
        ref = model(**x).logits
    got = clf(**x)
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    assert float((got - ref).abs().mean()) <= 0.05 * float(ref.abs().mean())
    ops = fused_ops(path)
    assert ops.get("MatMulIntegerToFloat", 0) + ops.get("QLinearMatMul", 0) >= 13, ops  # integer GEMMs
    assert ops.get("MatMul", 0) == 0, ops  # no Linear left as a float MatMul


@pytest.mark.parametrize("scale", [0.1, 0.0123457, 0.0371])
def test_the_quantizer_is_quantize_linear_bit_for_bit(tmp_path, scale):
    """fake_quantize_static and ORT's QuantizeLinear -> DequantizeLinear agree on a million values (x / scale,
    round half to even, clamp), including the clipped ones."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from labkit.quant.static import fake_quantize_static

    x = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 3
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"),
         numpy_helper.from_array(np.array(128, np.uint8), "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "qdq.onnx"))
    y = ort.InferenceSession(str(tmp_path / "qdq.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    ours = fake_quantize_static(x, torch.tensor(scale), torch.tensor(128.0), 0, 255).numpy()
    assert np.array_equal(y, ours)


def test_runtimes_clip_values_beyond_the_calibrated_range_like_the_model(tmp_path):
    """A one-quantizer graph: what ORT returns for out-of-range inputs is what clipping_demo says."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from labkit.quant.static import StaticQuantizer

    q = StaticQuantizer("uint8")
    q(torch.linspace(-1.0, 1.0, 101))
    q.finish_calibration()
    values = [-7.0, -0.9, 0.25, 0.9, 9.0]
    demo = clipping_demo(q, values)
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [numpy_helper.from_array(np.array(float(q.scale), np.float32), "s"),
         numpy_helper.from_array(np.array(int(q.zero_point), np.uint8), "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "clip.onnx"))
    y = ort.InferenceSession(str(tmp_path / "clip.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.array(values, np.float32)})[0]
    assert np.array_equal(y, np.array(demo["outputs"], np.float32))
    assert demo["clipped"] == [True, False, False, False, True]


def test_openvino_agrees_with_pytorch_where_installed(exported):
    pytest.importorskip("openvino")
    model, path, _ = exported
    clf = load_static_artifact(path, model, runtime="openvino")
    x = batch(n=32, seed=3)
    with torch.no_grad():
        ref = model(**x).logits
    got = clf(**x)
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    assert float((got - ref).abs().mean()) <= 0.05 * float(ref.abs().mean())
    precisions = clf.executed_precisions()
    assert sum(v for k, v in precisions.items() if k.startswith("FullyConnected:u8")) >= 13, precisions


def test_export_needs_a_prepared_model(tmp_path):
    with pytest.raises(DeployError, match="prepare_static"):
        export_static_qdq(tiny_bert(), tmp_path / "x.onnx")
