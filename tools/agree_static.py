"""Deployed static INT8 vs its PyTorch model on SST-2 dev: accuracy and sentences labelled differently.

    python tools/agree_static.py --candidate b-full --state /tmp/static_explore/b-full_qat_s0.pt

Rebuilds the static model from the fine-tuned FP32 checkpoint and the saved QAT state, exports the QDQ graph
(checked bit for bit against the model), and evaluates PyTorch, ONNX Runtime and OpenVINO (where installed) on
the same 872 sentences, each batch padded to 128 tokens.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from labkit.data import load_text_classification, tokenize_classification
from labkit.deploy.onnx_runtime import evaluate
from labkit.deploy.qdq_export import export_static_qdq, load_static_artifact
from labkit.quant.static import StaticInt8Config, calibrate_static, prepare_static

sys.path.insert(0, str(Path(__file__).parent))
from explore_static import CANDIDATES, LAYERS, batches  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", default="b-full")
    ap.add_argument("--state", default=None, help="a saved QAT state; without it: PTQ, min-max on training rows")
    ap.add_argument("--work", default="/tmp/static_explore")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weight-bits", type=int, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ckpt = Path(args.work) / f"fp32_s{args.seed}"
    tok = AutoTokenizer.from_pretrained(ckpt)
    fp32 = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    kw = dict(CANDIDATES[args.candidate])
    if args.weight_bits:
        kw["weight_bits"] = args.weight_bits
    model = prepare_static(copy.deepcopy(fp32), StaticInt8Config(layers=LAYERS, **kw))
    ev = tokenize_classification(load_text_classification("sst2", "validation"), tok)
    tr = tokenize_classification(load_text_classification("sst2", "train", n=20000, seed=args.seed + 100), tok)
    calibrate_static(model, list(batches(tr, tok, 32, seed=1, limit=8)))  # as explore_static's PTQ
    if args.state:
        model.load_state_dict(torch.load(args.state, weights_only=True))
    kind = "qat" if args.state else "ptq"
    path = Path(args.work) / f"{args.candidate}_{kind}_s{args.seed}.onnx"
    info = export_static_qdq(model, path)
    out = {"export": {k: v for k, v in info.items() if k != "path"}}
    runs = {"pytorch": evaluate(model, ev, tok, pad_to=128, return_predictions=True)}
    runs["ort"] = evaluate(load_static_artifact(path, model, "ort", args.threads), ev, tok, pad_to=128,
                           return_predictions=True)
    try:
        runs["openvino"] = evaluate(load_static_artifact(path, model, "openvino", args.threads), ev, tok, pad_to=128,
                                    return_predictions=True)
    except ImportError as err:
        out["openvino"] = str(err)
    ref = runs["pytorch"]["predictions"]
    for name, r in runs.items():
        out[name] = {"accuracy": 100 * r["accuracy"],
                     "differ_from_pytorch": sum(a != b for a, b in zip(r["predictions"], ref, strict=True))}
    print(json.dumps(out))
    with (Path(args.work) / "agreement.jsonl").open("a") as f:
        f.write(json.dumps({"candidate": args.candidate, "kind": kind, "state": args.state, **out}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
