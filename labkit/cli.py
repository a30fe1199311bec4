"""`python -m labkit.bench <experiment> [options]`: run a benchmark into a run folder; exit 0 only when it is complete.

Argument parsing only: the options of every experiment are declared here; the experiment module
(labkit.experiments.*) checks them before any model loads (`check(args)`: a ValueError is a usage error, exit 2)
and runs (`run(args) -> dict`, the result with its status). Exit status: 0 complete, 1 failed, 2 bad arguments,
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from labkit.results.run import EXIT_CODES

# experiment name -> (module, one-line help)
EXPERIMENTS = {
    "qat": ("labkit.experiments.qat_bert.bench", "QAT vs PTQ vs FP32 on BERT (notebook 01)"),
    "attention": ("labkit.experiments.attention",
                  "latency and peak memory against sequence length per backend (notebook 02)"),
    "kernels": ("labkit.experiments.kernels", "attention kernels alone, TFLOP/s per backend (notebook 02)"),
    "hybrid": ("labkit.experiments.hybrid.bench", "FA2 + selective INT8 against bf16 (notebook 03)"),
    "triton-fa2": ("labkit.experiments.triton_fa2",
                   "labkit's Triton FlashAttention-2: checks and TFLOP/s against fa2 and cudnn (notebook 02b)"),
    "fast8bit": ("labkit.experiments.fast8bit",
                 "8-bit that pays on the GPU: labkit's INT8 kernel, torchao INT8/FP8, compiled decode and prefill "
                 "(notebook 03b)"),
    "hybrid-qat": ("labkit.experiments.hybrid_qat_fsdp", "QAT sharded over N GPUs with FSDP2 (torchrun; notebook 04)"),
    "deploy": ("labkit.experiments.deploy_bert",
               "the QAT BERT deployed on a CPU: torchao vs ONNX Runtime vs ORT quantize_dynamic (notebook 01b)"),
}


# experiments that still write their own files (their own --out, no run folder), unless OPTIONS declares them;
# the others get --out/--resume/--update-reference here and declare the rest in their module (`add_arguments`)
OWN_FILES = {"deploy"}


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a whole number of at least 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give a whole number of at least 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a number above 0, e.g. 2e-5") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give a number above 0, e.g. 2e-5")
    return value


def positive_ints(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers of at least 1 ("512,1024")."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers; write them like 512,1024,2048") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1; write them like 512,1024,2048")
    return values


def seed_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated seeds, whole numbers of at least 0 ("0,1,2")."""
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seeds; write them like 0,1,2") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct seeds of at least 0, like 0,1,2")
    return values


def names(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated names ("fa2,sdpa")."""
    values = tuple(p.strip() for p in text.split(",") if p.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give comma-separated names")
    return values


def _qat_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="sst2", help="sst2 (default) or imdb")
    p.add_argument("--model", default="minilm-l6", help="classifier name (labkit.models) or hub id")
    p.add_argument("--n-train", type=positive_int, default=None, help="training rows (default: the profile's)")
    p.add_argument("--n-eval", type=positive_int, default=None, help="eval rows (default: the profile's; full = all)")
    p.add_argument("--fp32-steps", type=positive_int, default=None, help="FP32 fine-tuning steps")
    p.add_argument("--extra-steps", type=positive_int, default=None,
                   help="QAT steps = the FP32 reference's extra steps")
    p.add_argument("--fp32-epochs", type=positive_float, default=None,
                   help="FP32 fine-tuning epochs over the training rows (full: 3; --fp32-steps wins)")
    p.add_argument("--extra-epochs", type=positive_float, default=None,
                   help="QAT (and FP32 + extra) epochs (full: 1; --extra-steps wins)")
    p.add_argument("--lr", type=positive_float, default=None, help="FP32 fine-tuning learning rate (full: 5e-5)")
    p.add_argument("--extra-lr", type=positive_float, default=None, help="QAT / FP32-extra learning rate (full: 2e-5)")
    p.add_argument("--seeds", type=seed_list, default=None, help="comma-separated seeds (full: 0,1,2; quick: 0)")
    p.add_argument("--train-device", choices=("cpu", "cuda", "auto"), default=None,
                   help="where training runs (full: auto = a GPU when visible); everything else runs on the CPU")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile latency")


def _attention_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="shape or embedded model (default: by profile)")
    p.add_argument("--backends", type=names, default=None,
                   help="comma-separated (default: every backend, unavailable ones recorded with their reason)")
    p.add_argument("--seq-lens", type=positive_ints, default=None,
                   help="comma-separated sequence lengths (default: by profile)")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                   help="default: by profile")
    p.add_argument("--allow-beyond-context", action="store_true",
                   help="let a trained model run past its context length (random-weight shapes always may)")
    p.add_argument("--no-kernels", action="store_true", help="skip the kernel benchmark")
    p.add_argument("--no-verify", action="store_true", help="skip the profiler check of the kernel")


def _kernels_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", type=names, default=None,
                   help="comma-separated kernel backends (default: all but math)")


def _hybrid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="trained causal LM (embedded name or hub id/folder); 'none' skips this part")
    p.add_argument("--layers", default="feed-forward",
                   help="layers to quantize: 'feed-forward' (gate/up/down, the default), 'all-linear' (every Linear "
                        "in the blocks; the head stays float, it is tied to the embedding on SmolLM2), or a regular "
                        "expression on module names")
    p.add_argument("--variants", type=names, default=None, help="comma-separated subset of base,base-ft,ptq-w8,"
                   "ptq-w8a8,ft-ptq-w8,ft-ptq-w8a8,qat-w8,qat-w8a8,ptq-fp8,ft-ptq-fp8,qat-fp8,qat-w8-labkit "
                   "(default: by profile; the full GPU profile runs all of them)")
    p.add_argument("--ppl-path", choices=("auto", "emulated", "real"), default=None,
                   help="w8a8 perplexity: through an exact float32 emulation of the INT8 arithmetic, checked against "
                        "the converted model on one batch ('emulated'), through the converted model ('real'), or "
                        "'auto' (default: emulated on a GPU, where torchao's eager INT8 path is slow; real on a CPU)")
    p.add_argument("--steps", type=positive_int, default=None, help="fine-tune steps (base-ft and QAT alike)")
    p.add_argument("--lr", type=positive_float, default=None, help="fine-tune learning rate")
    p.add_argument("--seq-len", type=positive_int, default=None, help="block length for perplexity and fine-tuning")
    p.add_argument("--eval-blocks", type=positive_int, default=None,
                   help="test blocks for perplexity (default: by profile)")
    p.add_argument("--prefill-lens", type=positive_ints, default=None,
                   help="comma-separated prefill lengths (trained model)")
    p.add_argument("--allow-beyond-context", action="store_true",
                   help="let the trained model run past its context length")
    p.add_argument("--no-sensitivity", action="store_true", help="skip the per-layer sensitivity table")
    p.add_argument("--shape", default="llama-2-7b",
                   help="random-weight shape for the speed/memory part (GPU only); 'none' skips it")
    p.add_argument("--shape-lens", type=positive_ints, default=(8192, 32768),
                   help="comma-separated prefill lengths for the shape")
    p.add_argument("--shape-modes", type=names, default=("bf16", "w8", "w8a8"),
                   help="comma-separated: bf16,w8,w8a8,w8-labkit (INT8 on labkit's Triton kernel),fp8 (FP8 row-wise, "
                        "GPUs >= 8.9)")
    p.add_argument("--memory-cap-gb", type=float, default=80.0,
                   help="cap PyTorch's GPU memory at this many GB (1e9 bytes) for the shape part, so 'fits an 80 GB "
                        "card' is tested directly on a bigger one (default 80; 0: no cap)")
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="comma-separated seeds for the fine-tuned variants (full: 0,1,2; quick: 0)")


def _deploy_options(p: argparse.ArgumentParser) -> None:
    importlib.import_module("labkit.experiments.deploy_bert.options").add_arguments(p)


OPTIONS = {"qat": _qat_options, "attention": _attention_options, "kernels": _kernels_options,
           "hybrid": _hybrid_options, "deploy": _deploy_options}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each experiment's sub-parser (for its usage errors)."""
    parser = argparse.ArgumentParser(prog="python -m labkit.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    subparsers = {}
    for name, (module_name, help_text) in EXPERIMENTS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--profile", choices=("quick", "full"), default=None,
                       help="run profile (default: $LABKIT_PROFILE, else quick)")
        if name in OWN_FILES and name not in OPTIONS:  # declares its own options and writes its own files
            p.add_argument("--out", default=None, help="result file")
            importlib.import_module(module_name).add_arguments(p)
            subparsers[name] = p
            continue
        p.add_argument("--out", default=None,
                       help="result file or folder of this run (default: a new folder runs/<experiment>_<device>_"
                            "<time>/); never the committed reference folder")
        p.add_argument("--resume", action="store_true",
                       help="continue the interrupted or failed run of --out from its JSONL, skipping what it "
                            "already measured")
        p.add_argument("--update-reference", action="store_true",
                       help="at the end, copy the result to data/reference/<experiment>_<device>.json; only a "
                            "complete full-profile run can do so")
        if name in OPTIONS:
            OPTIONS[name](p)
        else:
            importlib.import_module(module_name).add_arguments(p)
        subparsers[name] = p
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    module = importlib.import_module(EXPERIMENTS[args.experiment][0])
    try:
        if hasattr(module, "check"):
            module.check(args)  # every argument, before any model loads
    except ValueError as err:
        subparsers[args.experiment].error(str(err))
    result = module.run(args)
    # experiments on labkit.results.run report their status; the others exit non-zero themselves on failure
    return EXIT_CODES.get(result.get("status") if isinstance(result, dict) else None, 0)


if __name__ == "__main__":
    sys.exit(main())
