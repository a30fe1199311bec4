"""Export a BERT classifier to ONNX and rebuild it as an INT8 graph on exactly the grid QAT trained.

Three artifacts, one recipe:
    FP32        `export_onnx` (TorchScript exporter, eager attention so ORT's BERT optimizer recognises the
                pattern) then `optimize_bert` (onnxruntime.transformers fusions: Attention, SkipLayerNorm,
                BiasGelu, EmbedLayerNorm).
    QAT INT8    `export_qat_int8`: the torchao-converted model's INT8 codes and per-channel scales are written
                as-is into the graph (no re-quantization): every quantized Linear becomes
                    per-token symmetric INT8 quantization of its input (the scheme QAT simulated and torchao
                    runs: scale = absmax / 127.5 per token, q = clamp(round(x * (1/scale)), -128, 127))
                    -> MatMulIntegerToFloat(u8 codes with zero point 128, s8 weight codes, per-column scales)
                    -> times the per-token scale.
                Dynamic per-token scales, not static calibrated ones: that is what the fake quantizers showed
                the model during training, so the deployed numerics equal the trained ones; a static per-tensor
                scale would be a new approximation QAT never saw. The codes are stored u8 = s8 + 128 because
                VNNI's instruction multiplies u8 by s8; with zero point 128 the integer products are identical.
                Embedding tables become Gather on the INT8 table, times the gathered per-row scale.
                Q, K and V keep their own INT8 projections and feed ORT's fused MultiHeadAttention.
    QAT INT8, exact  `export_qat_int8(..., fusions="exact")`: the logits of fusions="none", bit for bit (the
                same float operations on the same values, in the same order), in fewer and cheaper kernels.
                Each step is exact by construction and checked with np.array_equal in tests/test_deploy_onnx.py:
                  - the per-token scale goes into MatMulIntegerToFloat's A-scale input ([B, T, 1]): ORT then
                    multiplies the GEMM output in place (its ScaleOutput, the same float product as the Mul
                    node), instead of a separate Mul writing a new tensor: one Mul per Linear less.
                  - the per-token scale is max(hi / 127.5, lo / -127.5, eps) in one 3-input Max, the same value
                    as max(max(hi, -lo) / 127.5, eps) (correctly rounded division by a positive constant is
                    monotone): one tiny node less per quantized tensor (Div, Div, Max for Neg, Max, Div, Max).
                  - the bias in front of each GELU is stored [1, 1, N], so ORT keeps Add + Gelu instead of
                    fusing BiasGelu, whose CPU kernel is about 2x slower here; both compute
                    0.5 * (x + b) * (erf((x + b) * 0.70710677) + 1) with the same erf.
                  - bias Adds read (activation, bias), not (bias, activation), so ORT may run them in place.
                  - the exported attention (Q/K/V bias Adds, Reshape/Transpose, MatMul, scale, mask Add,
                    Softmax, MatMul, Transpose/Reshape) becomes one MultiHeadAttention on the bias-free Q/K/V,
                    the concatenated bias, the [B, T] padding mask, the exported scale and the exported mask
                    value: the same MLAS SGEMMs (per element the same FMA chain over the head dimension), the
                    same MlasComputeSoftmax, the bias added while transposing, the mask added through the
                    GEMM's beta = 1 on a mask that is +0 at real tokens; no separate transposes or mask Add.
                Attention stays float (QAT never simulated INT8 attention); the per-token INT8 codes and the
                integer GEMMs are untouched. Not exact or not faster, so left out: one GEMM for Q, K and V
                (exact, but the Split copy eats the gain), ReduceMax(Abs(x)) for the absmax (exact, slower).
    peer        `quantize_dynamic_peer`: ORT's own post-training `quantize_dynamic` (per-channel INT8 weights,
                per-tensor dynamic u8 activations) of the FP32 export.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
META_KEY = "labkit_int8_weights"
MS_DOMAIN = "com.microsoft"


class DeployError(ValueError):
    """The model or file cannot be deployed as asked (never converted, not found, wrong kind)."""


@dataclass
class Int8Weights:
    """torchao's INT8 codes and scales of a converted model, by module name (numpy, as stored)."""

    linears: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # codes [out,in] s8, scale [out]
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # codes [V,D] s8, scale [V]


def _key(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, hashlib.sha1(a.tobytes()).hexdigest()


def _torchao_parts(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 codes, per-row scale) of a torchao Int8Tensor / IntxUnpackedToInt8Tensor, else None."""
    if type(w).__name__ not in ("Int8Tensor", "IntxUnpackedToInt8Tensor"):
        return None
    zp = getattr(w, "zero_point", None)
    if zp is not None and zp.numel() and bool((zp != 0).any()):
        raise DeployError("only symmetric INT8 weights (zero point 0) can be deployed; this model has zero points")
    if getattr(w, "act_quant_kwargs", None) is not None and getattr(w, "act_quant_scale", None) is not None:
        raise DeployError("static-activation INT8 layers are not supported; convert QAT with activations='int8-dynamic'")
    if tuple(w.block_size) != (1, w.shape[1]):
        raise DeployError(f"weights must have one scale per row, got block_size {tuple(w.block_size)}")
    return w.qdata.numpy().astype(np.int8), w.scale.float().reshape(-1).numpy()


def float_twin(model: nn.Module) -> tuple[nn.Module, Int8Weights]:
    """A float copy of a converted QAT model whose weights are the dequantized INT8 values (codes x scale),
    plus the codes and scales themselves. Raises DeployError on a model that was never prepared/converted."""
    from labkit.quant.qat import qat_state

    state = qat_state(model)
    if state is None:
        raise DeployError("this model was never prepared for QAT: call labkit.quant.qat.prepare_qat(model), train, "
                          "then convert_qat(model) before export_qat_int8; for a float model use export_onnx")
    if not state.converted:
        raise DeployError("this model is prepared (fake-quantized) but not converted: call "
                          "labkit.quant.qat.convert_qat(model) first, so the INT8 grid is fixed")
    if state.activations != "int8-dynamic":
        raise DeployError(f"activations={state.activations!r} is not deployable here; QAT with 'int8-dynamic' "
                          "(symmetric per-token) is what this exporter reproduces")
    twin = copy.deepcopy(model).eval()
    weights = Int8Weights()
    for name, mod in twin.named_modules():
        parts = _torchao_parts(getattr(mod, "weight", None))
        if parts is None:
            continue
        (weights.embeddings if isinstance(mod, nn.Embedding) else weights.linears)[name] = parts
        mod.weight = nn.Parameter(mod.weight.dequantize().float(), requires_grad=False)
    if not weights.linears:
        raise DeployError("the converted model has no INT8 Linear layers to deploy")
    return twin, weights


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Export a float classifier (input_ids, attention_mask, token_type_ids -> logits), dynamic batch and length."""
    from labkit.quant.report import int8_modules

    if int8_modules(model):
        raise DeployError("export_onnx takes a float model; for a torchao INT8 model call export_qat_int8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # the attention pattern ORT's BERT optimizer fuses
    ids = torch.randint(1000, 2000, (2, 16))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    axes = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), input_names=list(INPUT_NAMES), output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path


def optimize_bert(src: str | Path, dst: str | Path, num_heads: int, hidden_size: int,
                  embed_layer_norm: bool = True, attention: bool = True) -> tuple[Path, dict]:
    """ORT's BERT graph fusions (onnxruntime.transformers.optimizer); returns (path, fused-op counts)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = embed_layer_norm
    options.enable_attention = attention
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                             optimization_options=options, opt_level=0)
    opt.save_model_to_file(str(dst))
    counts = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    return Path(dst), counts


# ------------------------------------------------------------------------------------- INT8 graph rewrite


class _Rewriter:
    """Replaces float MatMul/Gemm/Attention/Gather nodes whose weights are the dequantized QAT weights."""

    def __init__(self, model, weights: Int8Weights, exact: bool = False, num_heads: int = 0):
        from onnx import numpy_helper

        self.exact, self.num_heads = exact, num_heads  # exact: the fusions="exact" rewrites (module doc)
        self.model, self.graph = model, model.graph
        self.init = {i.name: i for i in self.graph.initializer}
        self.arrays = {}
        self.np = numpy_helper
        self.by_key = {}
        for name, (codes, scale) in weights.linears.items():
            deq = codes.astype(np.float32) * scale[:, None]
            self.by_key[("linear",) + _key(deq.T)] = name  # MatMul stores W^T
            self.by_key[("linear-t",) + _key(deq)] = name  # Gemm(transB=1) stores W
        for name, (codes, scale) in weights.embeddings.items():
            self.by_key[("embedding",) + _key(codes.astype(np.float32) * scale[:, None])] = name
        self.weights = weights
        self.new_nodes, self.new_inits, self.meta = [], [], {}
        self.quantized_inputs: dict[str, tuple[str, str]] = {}
        self.mask_2d: str | None = None

    def array(self, name: str) -> np.ndarray | None:
        if name not in self.init:
            return None
        if name not in self.arrays:
            self.arrays[name] = self.np.to_array(self.init[name])
        return self.arrays[name]

    def add_init(self, name: str, arr: np.ndarray) -> str:
        self.new_inits.append(self.np.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> None:
        from onnx import helper

        self.new_nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0] + "/" + op, domain=domain, **attrs))

    def quantize_input(self, x: str) -> tuple[str, str]:
        """Per-token symmetric INT8 quantization of tensor `x` (shared by every Linear reading it)."""
        if x in self.quantized_inputs:
            return self.quantized_inputs[x]
        p = f"{x}/qtok"
        if "qtok/one" not in self.init:
            self.init["qtok/one"] = self.add_init("qtok/one", np.array(1.0, np.float32))
            self.add_init("qtok/half_range", np.array(127.5, np.float32))
            self.add_init("qtok/eps", np.array(np.finfo(np.float32).eps, np.float32))
            self.add_init("qtok/zp128", np.array(128, np.uint8))
            self.add_init("qtok/neg_half_range", np.array(-127.5, np.float32))
        self.node("ReduceMax", [x], [p + "/hi"], axes=[-1], keepdims=1)
        self.node("ReduceMin", [x], [p + "/lo"], axes=[-1], keepdims=1)
        if self.exact:  # max(hi / 127.5, lo / -127.5, eps): the same value in 3 tiny nodes instead of 4
            self.node("Div", [p + "/hi", "qtok/half_range"], [p + "/s_hi"])
            self.node("Div", [p + "/lo", "qtok/neg_half_range"], [p + "/s_lo"])
            self.node("Max", [p + "/s_hi", p + "/s_lo", "qtok/eps"], [p + "/scale"])
        else:
            self.node("Neg", [p + "/lo"], [p + "/neglo"])
            self.node("Max", [p + "/hi", p + "/neglo"], [p + "/amax"])
            self.node("Div", [p + "/amax", "qtok/half_range"], [p + "/s0"])
            self.node("Max", [p + "/s0", "qtok/eps"], [p + "/scale"])
        self.node("Reciprocal", [p + "/scale"], [p + "/inv"])
        self.node("Mul", [x, p + "/inv"], [p + "/xs"])
        self.node("QuantizeLinear", [p + "/xs", "qtok/one", "qtok/zp128"], [p + "/q"])
        self.quantized_inputs[x] = (p + "/q", p + "/scale")
        return self.quantized_inputs[x]

    def qlinear(self, x: str, module: str, out: str) -> None:
        """out = (per-token INT8 x) @ (QAT INT8 weight)^T, scaled back to float, without bias."""
        codes, scale = self.weights.linears[module]
        q, s = self.quantize_input(x)
        w_name = self.add_init(f"{module}.weight_int8_t", np.ascontiguousarray(codes.T))
        s_name = self.add_init(f"{module}.weight_scale", scale.astype(np.float32))
        self.meta[module] = {"kind": "linear", "codes_t": w_name, "scale": s_name}
        if self.exact:  # A-scale [B, T, 1]: ORT scales the output in place after the GEMM (no bias input, see doc)
            self.node("MatMulIntegerToFloat", [q, w_name, s, s_name, "qtok/zp128"], [out], domain=MS_DOMAIN)
            return
        self.node("MatMulIntegerToFloat", [q, w_name, "qtok/one", s_name, "qtok/zp128"], [out + "/int"],
                  domain=MS_DOMAIN)
        self.node("Mul", [out + "/int", s], [out])

    def find_mask_2d(self, mask_index: str) -> str:
        producers = {o: n for n in self.graph.node for o in n.output}
        reduce = producers.get(mask_index)
        if reduce is None or reduce.op_type != "ReduceSum":
            raise DeployError(f"unexpected attention mask producer for {mask_index!r}; cannot build MultiHeadAttention")
        return reduce.input[0]  # the attention mask cast to int32, shape [batch, sequence]

    def rewrite(self) -> None:
        kept = []
        for n in self.graph.node:
            if not self.try_replace(n):
                kept.append(n)
            else:
                kept.extend(self.new_nodes)
                self.new_nodes = []
        if self.exact:
            kept = self.exact_rewrites(kept)
        del self.graph.node[:]
        self.graph.node.extend(kept)
        used = {i for n in self.graph.node for i in n.input}
        keep = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep + [i for i in self.new_inits if i.name in used])

    # ----------------------------------------------------------------- fusions="exact" (see the module doc)

    def exact_rewrites(self, nodes: list) -> list:
        for n in nodes:
            if n.op_type == "Add" and n.input[0] in self.init and n.input[1] not in self.init:
                a, b = n.input[0], n.input[1]
                n.input[0], n.input[1] = b, a  # activation first: ORT may reuse its buffer for the sum
        self.keep_add_gelu(nodes)
        return self.prune(self.multihead_attention(nodes))

    def keep_add_gelu(self, nodes: list) -> None:
        """Store the bias of each Add that feeds the exported exact GELU (x / sqrt2 -> Erf ..., x * ...) as
        [1, 1, N]: ORT's BiasGelu fusion only takes a 1-D bias, so it keeps Add + Gelu (faster on CPU, same math)."""
        consumers: dict[str, list] = {}
        for n in nodes:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        for n in nodes:
            ops = {c.op_type for c in consumers.get(n.output[0], [])}
            if n.op_type != "Add" or not {"Div", "Mul"} <= ops:
                continue
            for j, name in enumerate(n.input):
                b = self.array(name)
                if b is not None and b.ndim == 1:
                    n.input[j] = self.add_init(name + "/1x1xN", b.reshape(1, 1, -1))

    def scalar(self, name: str, producers: dict) -> float | None:
        a = self.array(name)
        if a is None and (c := producers.get(name)) is not None and c.op_type == "Constant":
            a = self.np.to_array(c.attribute[0].t)
        return float(a.reshape(())) if a is not None and a.size == 1 else None

    def multihead_attention(self, nodes: list) -> list:
        """Each exported eager self-attention -> one com.microsoft MultiHeadAttention (see the module doc)."""
        from onnx import helper

        producers = {o: n for n in nodes for o in n.output}
        consumers: dict[str, list] = {}
        for n in nodes:
            for i in n.input:
                consumers.setdefault(i, []).append(n)

        def made_by(name, op):
            n = producers.get(name)
            return n if n is not None and n.op_type == op else None

        def sole_reader(name, op):
            cs = consumers.get(name, [])
            return cs[0] if len(cs) == 1 and cs[0].op_type == op else None

        def transpose(n, perm):
            return n is not None and [list(a.ints) for a in n.attribute if a.name == "perm"] == [perm]

        def unbiased(t):  # Transpose(Reshape(Add(x, bias))) -> (x, bias, [Reshape, Add]) or None
            r = made_by(t.input[0], "Reshape")
            a = r and made_by(r.input[0], "Add")
            b = a and self.array(a.input[1])
            if b is None or b.ndim != 1 or len(consumers.get(a.output[0], [])) != 1:
                return None
            return a.input[0], b, [r, a]

        remove, insert, mask_i32 = set(), {}, None
        for sm in [n for n in nodes if n.op_type == "Softmax"]:
            add = made_by(sm.input[0], "Add")
            mul = add and made_by(add.input[0], "Mul")
            mm1 = mul and made_by(mul.input[0], "MatMul")
            mm2 = sole_reader(sm.output[0], "MatMul")
            to = mm2 and sole_reader(mm2.output[0], "Transpose")
            ro = to and sole_reader(to.output[0], "Reshape")
            where = add and made_by(add.input[1], "Where")
            if None in (mm1, mm2, to, ro, where) or mm2.input[0] != sm.output[0]:
                continue
            tq, tk, tv = (made_by(mm1.input[0], "Transpose"), made_by(mm1.input[1], "Transpose"),
                          made_by(mm2.input[1], "Transpose"))
            scale = self.scalar(mul.input[1], producers)
            fill = [self.scalar(i, producers) for i in where.input[1:]]
            if not (transpose(tq, [0, 2, 1, 3]) and transpose(tk, [0, 2, 3, 1]) and transpose(tv, [0, 2, 1, 3])
                    and transpose(to, [0, 2, 1, 3])) or scale is None or fill[0] != 0.0 or fill[1] is None:
                continue
            parts = [unbiased(t) for t in (tq, tk, tv)]
            if None in parts or not self.num_heads:
                continue
            if mask_i32 is None:
                mask_i32 = "attention_mask/int32"
                insert[id(nodes[0])] = [helper.make_node("Cast", [INPUT_NAMES[1]], [mask_i32], name=mask_i32, to=6)]
            o = ro.output[0]
            bias = self.add_init(o + "/qkv_bias", np.concatenate([p[1] for p in parts]).astype(np.float32))
            insert[id(ro)] = [helper.make_node(
                "MultiHeadAttention", [p[0] for p in parts] + [bias, mask_i32], [o], name=o + "/MultiHeadAttention",
                domain=MS_DOMAIN, num_heads=self.num_heads, scale=scale, mask_filter_value=fill[1])]
            remove |= {id(n) for n in (add, mul, mm1, sm, mm2, tq, tk, tv, to, ro)}
            remove |= {id(n) for p in parts for n in p[2]}
        out = []
        for n in nodes:
            out.extend(insert.get(id(n), []))
            if id(n) not in remove:
                out.append(n)
        return out

    def prune(self, nodes: list) -> list:
        """Drop nodes nothing reads any more (the shape arithmetic of a fused-away Reshape)."""
        outputs = {o.name for o in self.graph.output}
        while True:
            used = {i for n in nodes for i in n.input} | outputs
            keep = [n for n in nodes if any(o in used for o in n.output)]
            if len(keep) == len(nodes):
                return keep
            nodes = keep

    def try_replace(self, n) -> bool:
        from onnx import helper

        if n.op_type == "MatMul" and (w := self.array(n.input[1])) is not None:
            name = self.by_key.get(("linear",) + _key(w))
            if name:
                self.qlinear(n.input[0], name, n.output[0])
                return True
        elif n.op_type == "Gemm" and (w := self.array(n.input[1])) is not None:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            name = self.by_key.get(("linear-t" if attrs.get("transB") else "linear",) + _key(w))
            if name and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA"):
                self.qlinear(n.input[0], name, n.output[0] + "/nobias")
                self.node("Add", [n.output[0] + "/nobias", n.input[2]], [n.output[0]])
                return True
        elif n.op_type == "Attention" and (w := self.array(n.input[1])) is not None:
            parts = np.split(w, 3, axis=1)
            names = [self.by_key.get(("linear",) + _key(p)) for p in parts]
            if all(names):
                heads = {a.name: helper.get_attribute_value(a) for a in n.attribute}["num_heads"]
                outs = [f"{n.output[0]}/{t}" for t in "qkv"]
                for name, out in zip(names, outs, strict=True):
                    self.qlinear(n.input[0], name, out)
                mask = self.find_mask_2d(n.input[3])
                self.node("MultiHeadAttention", outs + [n.input[2], mask], [n.output[0]], domain=MS_DOMAIN,
                          num_heads=heads)
                return True
        elif n.op_type == "Gather" and (t := self.array(n.input[0])) is not None:
            name = self.by_key.get(("embedding",) + _key(t))
            if name:
                codes, scale = self.weights.embeddings[name]
                c = self.add_init(f"{name}.weight_int8", codes)
                s = self.add_init(f"{name}.weight_scale", scale.reshape(-1, 1).astype(np.float32))
                self.meta[name] = {"kind": "embedding", "codes": c, "scale": s}
                o = n.output[0]
                self.node("Gather", [c, n.input[1]], [o + "/codes"])
                self.node("Cast", [o + "/codes"], [o + "/codes_f"], to=1)
                self.node("Gather", [s, n.input[1]], [o + "/scale"])
                self.node("Mul", [o + "/codes_f", o + "/scale"], [o])
                return True
        return False


FUSIONS = ("all", "no-attention", "none", "exact")


def export_qat_int8(model: nn.Module, path: str | Path, *, fusions: str = "all") -> dict:
    """Write the converted QAT `model` as an INT8 ONNX graph on torchao's own codes and scales (see module doc).

    fusions: "all" (ORT's BERT fusions, attention -> MultiHeadAttention), "no-attention" (LayerNorm/GELU
    fusions only, attention left as exported), "none" (the export as is), for the ablation, or "exact" (the
    logits of "none" bit for bit, faster: see the module doc). Returns a summary: path, how many Linear and
    embedding weights went in as INT8, the fused operators, and the size in MB.
    """
    import onnx

    if fusions not in FUSIONS:
        raise ValueError(f"fusions={fusions!r} is not an option; use one of {FUSIONS}")
    twin, weights = float_twin(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = twin.config
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_onnx(twin, Path(tmp) / "float.onnx")
        fused: dict = {}
        if fusions not in ("none", "exact"):
            raw, fused = optimize_bert(raw, Path(tmp) / "fused.onnx", cfg.num_attention_heads, cfg.hidden_size,
                                       embed_layer_norm=False, attention=fusions == "all")  # keep the embedding Gathers to put INT8 tables in
        graph = onnx.load(str(raw))
    rw = _Rewriter(graph, weights, exact=fusions == "exact", num_heads=cfg.num_attention_heads)
    rw.rewrite()
    missing = [m for m in list(weights.linears) + list(weights.embeddings) if m not in rw.meta]
    if missing:
        raise DeployError(f"{len(missing)} INT8 weight(s) were not found in the exported graph: {missing[:4]}")
    if fusions == "exact":
        fused = {"MultiHeadAttention": sum(n.op_type == "MultiHeadAttention" for n in graph.graph.node)}
    if not any(o.domain == MS_DOMAIN for o in graph.opset_import):
        graph.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    graph.metadata_props.append(onnx.StringStringEntryProto(key=META_KEY, value=json.dumps(rw.meta)))
    onnx.save(graph, str(path))
    return {"path": str(path), "int8_linears": sum(v["kind"] == "linear" for v in rw.meta.values()),
            "int8_embeddings": sum(v["kind"] == "embedding" for v in rw.meta.values()),
            "fused": fused, "size_mb": path.stat().st_size / 1e6}


def onnx_int8_weights(path: str | Path) -> Int8Weights:
    """The INT8 codes and scales stored in an ONNX file written by `export_qat_int8`, by module name."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}; write one with export_qat_int8(model, path)")
    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}.get(META_KEY)
    if meta is None:
        raise DeployError(f"{path} was not written by export_qat_int8 (no {META_KEY} metadata)")
    arrays = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = Int8Weights()
    for name, entry in json.loads(meta).items():
        if entry["kind"] == "linear":
            out.linears[name] = (arrays[entry["codes_t"]].T, arrays[entry["scale"]].reshape(-1))
        else:
            out.embeddings[name] = (arrays[entry["codes"]], arrays[entry["scale"]].reshape(-1))
    return out


def verify_int8_weights(path: str | Path, model: nn.Module) -> dict:
    """Check that every INT8 weight in the ONNX file equals torchao's converted codes and scales, bit for bit."""
    stored = onnx_int8_weights(path)
    _, ref = float_twin(model)
    mismatched = []
    for kind in ("linears", "embeddings"):
        a, b = getattr(stored, kind), getattr(ref, kind)
        for name, (codes, scale) in b.items():
            got = a.get(name)
            if got is None or got[0].dtype != np.int8 or not np.array_equal(got[0], codes) \
                    or not np.array_equal(got[1], scale):
                mismatched.append(name)
    return {"linears": len(ref.linears), "embeddings": len(ref.embeddings), "mismatched": mismatched,
            "identical": not mismatched}


def quantize_dynamic_peer(fp32_onnx: str | Path, dst: str | Path) -> Path:
    """ORT's own PTQ of the FP32 export: `quantize_dynamic`, INT8 per-channel weights, default settings otherwise."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = Path(fp32_onnx)
    if not src.is_file():
        raise FileNotFoundError(f"no FP32 ONNX file at {src}; write one with export_onnx(model, path)")
    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    return Path(dst)
