"""`torchrun --nproc-per-node N -m labkit.bench hybrid-qat`: the hybrid's QAT sharded over N GPUs with FSDP2.

For each mode (qat-w8a8, qat-w8: feed-forward layers fake-quantized; plain: the same fine-tune without QAT) and
each sequence length, it builds the model, shards it (labkit.train.fsdp_qat), trains, and records per step the
loss, tokens/s and the peak memory of the worst GPU beside the training memory model's prediction. Lengths run
shortest first; out-of-memory is a data point and ends that mode's longer lengths. Optional: sharded checkpoints
(save every k steps, resume), and the final QAT model converted to INT8 and saved for single-GPU inference.

Models: a hub id or local folder, the embedded smollm2-135m, or a labkit shape (llama-2-7b ...) with random
weights, for speed and memory only (`--random-weights` builds any known shape that way, smollm2-135m included).
Only rank 0 writes: a run folder runs/hybrid_qat_fsdp_<gpu>x<N>_<time>/ (labkit.results.run; `--out` names another)
with result.json and result.jsonl, every step appended as it finishes and each finished (mode, length) run as a
`run` row. `--resume --out <run>` skips the runs its JSONL holds (`--from-checkpoint` restarts an unfinished one
from its sharded checkpoint). The committed data/reference/hybrid_qat_fsdp_<gpu>x<N>.json combines several runs
(labkit.experiments.hybrid_qat_fsdp_results.combine), so a single run never writes it.
Standalone: `torchrun --nproc-per-node N -m labkit.experiments.hybrid_qat_fsdp ...` takes the same arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from pathlib import Path

import torch

EXPERIMENT = "hybrid_qat_fsdp"
MODES = {"qat-w8a8": "int8-dynamic", "qat-w8": None, "plain": None}
LAYER_PRESETS = {"feed-forward": r"\.mlp\.(gate|up|down)_proj$", "all-linear": r"\.layers\.\d+\."}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="embedded name (smollm2-135m), hub id or local folder, or a shape (llama-2-7b, "
                             "llama-3-8b, tiny-llama: random weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="build the shape of --model with random weights (speed and memory only)")
    parser.add_argument("--num-layers", type=int, default=None, help="fewer decoder layers (random weights only)")
    parser.add_argument("--modes", default="qat-w8a8", help=f"comma-separated: {','.join(MODES)}")
    parser.add_argument("--layers", default="feed-forward",
                        help="layers to fake-quantize: feed-forward, all-linear, or a regex on module names")
    parser.add_argument("--seq-lens", default=None, help="comma-separated sequence lengths (default: by profile)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: by profile)")
    parser.add_argument("--global-batch", type=int, default=None,
                        help="sequences per step over all processes; a multiple of the process count")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: by profile)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="auto",
                        help="auto (WikiText-2 validation for trained models, random tokens for random weights), "
                             "wikitext2, random, or a .safetensors file with an [n, len] 'input_ids' tensor")
    parser.add_argument("--attention", default=None, help="labkit backend (default: fa2 on a GPU, sdpa on a CPU)")
    parser.add_argument("--compile-fake-quant", action="store_true",
                        help="torch.compile each fake quantizer (fuses its elementwise passes; same numerics)")
    parser.add_argument("--compile-layers", action="store_true",
                        help="torch.compile each decoder layer's forward (fake quantizers, norms, SwiGLU fused with "
                             "their neighbours; FSDP2 hooks and activation checkpointing stay around it)")
    parser.add_argument("--no-checkpointing", action="store_true", help="turn activation checkpointing off")
    parser.add_argument("--checkpoint-dir", default=None, help="folder for sharded checkpoints (DCP)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="save every k steps (0: at the end only)")
    parser.add_argument("--from-checkpoint", action="store_true",
                        help="start from the sharded checkpoint in --checkpoint-dir (a run stopped by --stop-after)")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (then resume)")
    parser.add_argument("--export-int8", default=None, help="folder: save the converted INT8 + FA2 model there")
    parser.add_argument("--write-reference", "--reference", dest="write_reference", action="store_true",
                        help=argparse.SUPPRESS)  # the old flag: refused, with the way the reference is made


def _split(text: str | None, cast=str) -> list:
    return [cast(x) for x in text.split(",") if x.strip()] if text else []


def validate(args, world_size: int) -> dict:
    """Check every argument before any model loads; returns the resolved settings (or raises ValueError)."""
    from labkit.models import EMBEDDED_CAUSAL_LMS, SHAPES, _canonical
    from labkit.env import get_profile

    profile = getattr(args, "profile", None) or get_profile()
    cuda = torch.cuda.is_available() and os.environ.get("LABKIT_FSDP_DEVICE", "") != "cpu"
    modes = _split(args.modes)
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise ValueError(f"--modes {args.modes!r}: unknown {bad}; choose from {', '.join(MODES)}")
    key = _canonical(args.model)
    shape_only = key in SHAPES and key not in EMBEDDED_CAUSAL_LMS
    if args.random_weights and key not in SHAPES:
        raise ValueError(f"--random-weights needs a known shape, not {args.model!r}; shapes: {', '.join(SHAPES)}")
    if args.num_layers is not None and not (shape_only or args.random_weights):
        raise ValueError("--num-layers applies to random-weight shapes only; add --random-weights")
    if not (shape_only or args.random_weights or key in EMBEDDED_CAUSAL_LMS or "/" in args.model
            or Path(args.model).is_dir()):
        raise ValueError(f"--model {args.model!r} is not an embedded model ({', '.join(EMBEDDED_CAUSAL_LMS)}), "
                         f"a shape ({', '.join(SHAPES)}), a hub id 'org/name' or a local folder")
    random = shape_only or args.random_weights
    quick = profile == "quick"
    seq_lens = _split(args.seq_lens, int) or ([128] if quick else [1024 if not random or not cuda else 4096])
    steps = args.steps or (8 if quick else 50)
    batch = args.global_batch or (2 * world_size if quick else max(8, world_size))
    lr = args.lr or (1e-4 if random else 2e-5)
    if min(seq_lens) < 8:
        raise ValueError(f"--seq-lens {args.seq_lens!r}: every length must be >= 8")
    if steps < 1 or batch < 1 or batch % world_size:
        raise ValueError(f"--steps {steps} / --global-batch {batch}: steps >= 1 and a batch that is a positive "
                         f"multiple of the {world_size} process(es)")
    data = args.data
    if data not in ("auto", "wikitext2", "random") and not (data.endswith(".safetensors") and Path(data).is_file()):
        raise ValueError(f"--data {data!r}: use auto, wikitext2, random or an existing .safetensors file")
    if data == "wikitext2" and random:
        raise ValueError("--data wikitext2 needs a tokenizer: random-weight shapes train on --data random or a file")
    if args.write_reference or getattr(args, "update_reference", False):
        raise ValueError(f"--{'write' if args.write_reference else 'update'}-reference: data/reference/"
                         f"{EXPERIMENT}_<gpu>x<N>.json combines several runs (the shape sweep, the 1- vs N-process "
                         "loss match and its re-run); run each into its own --out, then join the complete "
                         "full-profile ones with labkit.experiments.hybrid_qat_fsdp_results.combine")
    if (args.from_checkpoint or args.checkpoint_every) and not args.checkpoint_dir:
        raise ValueError("--from-checkpoint / --checkpoint-every need --checkpoint-dir FOLDER")
    if args.from_checkpoint and not (Path(args.checkpoint_dir) / "trainer.json").is_file():
        raise ValueError(f"--from-checkpoint: {args.checkpoint_dir} holds no checkpoint (no trainer.json)")
    if (args.checkpoint_dir or args.export_int8) and (len(modes) > 1 or len(seq_lens) > 1):
        raise ValueError("--checkpoint-dir / --export-int8 take one mode and one sequence length")
    if args.export_int8 and modes[0] == "plain":
        raise ValueError("--export-int8 needs a QAT mode (qat-w8a8 or qat-w8), not plain")
    if getattr(args, "compile_layers", False) and args.compile_fake_quant:
        raise ValueError("--compile-layers already compiles the fake quantizers inside each layer: drop "
                         "--compile-fake-quant")
    if getattr(args, "compile_layers", False) and args.export_int8:
        raise ValueError("--compile-layers is for speed runs: export INT8 (--export-int8) from a run without it")
    if args.stop_after is not None and not 1 <= args.stop_after <= steps:
        raise ValueError(f"--stop-after {args.stop_after} must be between 1 and --steps ({steps})")
    from labkit.attention.backends import unavailable_reason

    attention = args.attention or ("fa2" if cuda else "sdpa")
    why = unavailable_reason(attention, "cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float32)
    if why:
        raise ValueError(f"--attention {attention}: {why}")
    paths = _run_paths(args, cuda, world_size)
    return dict(profile=profile, modes=modes, seq_lens=sorted(seq_lens), steps=steps, global_batch=batch, lr=lr,
                random=random, data=("random" if random else "wikitext2") if data == "auto" else data,
                attention=attention, out=paths[0] if paths else None, paths=paths, cuda=cuda)


def _run_paths(args, cuda: bool, world_size: int) -> tuple[Path, Path] | None:
    """(result JSON, JSONL) of the run, checked on rank 0 only (the one that writes); None on the other ranks."""
    from labkit.results.files import device_slug
    from labkit.results.run import RunSetupError, run_paths

    if int(os.environ.get("RANK", "0")) != 0:
        return None
    slug = device_slug("cuda" if cuda else "cpu") + (f"x{world_size}" if world_size > 1 else "")
    try:
        return run_paths(EXPERIMENT, slug, getattr(args, "out", None), resume=getattr(args, "resume", False))
    except RunSetupError as err:
        raise ValueError(str(err)) from None


def _blocks(data: str, model: str, seq_len: int, vocab: int, cfg) -> torch.Tensor:
    from labkit.train.fsdp_qat import random_blocks

    if data == "random":
        return random_blocks(vocab, cfg)
    if data == "wikitext2":
        from transformers import AutoTokenizer

        from labkit.models import EMBEDDED_CAUSAL_LMS, _canonical, _smollm2_folder
        from labkit.lm.perplexity import wikitext_blocks

        source = str(_smollm2_folder()) if _canonical(model) in EMBEDDED_CAUSAL_LMS else model
        return wikitext_blocks(AutoTokenizer.from_pretrained(source), "validation", seq_len)
    from safetensors.torch import load_file

    ids = load_file(data)["input_ids"].long()
    if ids.shape[1] < seq_len:
        raise ValueError(f"--data {data}: blocks of {ids.shape[1]} tokens are shorter than --seq-lens {seq_len}")
    return ids[:, :seq_len].contiguous()


def _predicted(model, cfg, world_size: int, mode: str) -> dict:
    from labkit.train.memory_model import GIB, ModelShape, TrainSetup, predicted_training_peak, training_breakdown

    shape = ModelShape.from_config(model.config)
    setup = TrainSetup(world_size=world_size, batch_per_gpu=cfg.global_batch // world_size,
                       compute_bytes=2 if cfg.compute_dtype in (None, "bfloat16") else 4,
                       checkpointing=cfg.checkpointing, frozen_embeddings=cfg.freeze_embeddings,
                       qat_ff_activations=mode == "qat-w8a8")
    parts = training_breakdown(shape, cfg.seq_len, setup)
    return {"predicted_gib": round(predicted_training_peak(shape, cfg.seq_len, setup) / GIB, 3),
            "predicted_parts_gib": {k: round(v / GIB, 3) for k, v in parts.items()}}


def check(args) -> None:
    """Every argument before any model loads (ValueError: a usage error, exit 2); sets args.settings."""
    args.settings = validate(args, int(os.environ.get("WORLD_SIZE", "1")))


def run(args) -> dict:
    """Run every (mode, sequence length) the run's JSONL does not hold yet; rank 0 writes the results. Returns the
    result; on rank 0 its `status` is complete, failed (a run that errored; OOM is a data point) or interrupted."""
    import torch.distributed as dist

    from labkit.env import provenance
    from labkit.measure.memory import is_memory_error
    from labkit.results.run import Run
    from labkit.train import fsdp_qat as fq

    s = getattr(args, "settings", None) or validate(args, int(os.environ.get("WORLD_SIZE", "1")))
    if not s["cuda"]:
        os.environ["LABKIT_FSDP_DEVICE"] = "cpu"
    env = fq.init_distributed()
    result = {"experiment": EXPERIMENT, "provenance": provenance(_command(args), s["profile"]),
              "world_size": env.world_size, "seed": args.seed,
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in s.items() if k != "paths"},
              "runs": [], "notes": []}
    run_ = Run(result, *s["paths"], resume=getattr(args, "resume", False)) if env.is_main else None
    # every rank skips the same finished runs (trained, or out of memory: a data point; a run that errored is tried
    # again): rank 0 reads them from the JSONL and tells the others
    finished = [{(r["mode"], r["seq_len"]): r for r in run_.recorded("run") if r["status"] in ("ok", "oom")}
                if run_ else None]
    if env.world_size > 1:
        dist.broadcast_object_list(finished, src=0)
    finished = finished[0]
    if s["random"]:
        result["notes"].append(f"{args.model}: random weights, for speed and memory only (losses mean nothing)")
    started = time.perf_counter()

    def say(msg: str) -> None:
        if env.is_main:
            print(f"[{EXPERIMENT} {time.perf_counter() - started:6.1f} s] {msg}", flush=True)

    def record(kind: str, row: dict) -> None:
        if run_ is not None:
            result["elapsed_s"] = round(time.perf_counter() - started, 1)
            run_.record(kind, row)

    if s["random"]:
        say(f"{args.model}: random weights, for speed and memory only")
    say(f"{env.world_size} process(es) on {env.device.type}; writing {s['out']}")
    with run_ if run_ is not None else contextlib.nullcontext():
        for mode in s["modes"]:
            for seq in s["seq_lens"]:
                if (mode, seq) in finished:
                    row = finished[(mode, seq)]
                    result["runs"].append(row)
                    say(f"{mode} @ {seq}: {row['status']} in an earlier attempt, not run again")
                    if row["status"] != "ok":
                        break  # out of memory there: the longer lengths of this mode are not tried
                    continue
                cfg = fq.TrainConfig(model=args.model, random_weights=args.random_weights,
                                     num_layers=args.num_layers, qat=mode != "plain",
                                     layers=LAYER_PRESETS.get(args.layers, args.layers), activations=MODES[mode],
                                     seq_len=seq, global_batch=s["global_batch"], steps=s["steps"], lr=s["lr"],
                                     seed=args.seed, checkpointing=not args.no_checkpointing,
                                     attention=s["attention"], compile_fake_quant=args.compile_fake_quant,
                                     compile_layers=getattr(args, "compile_layers", False))
                row = {"mode": mode, "seq_len": seq, "config": cfg.as_dict(), "status": "running", "steps": []}
                result["runs"].append(row)
                try:
                    _one_run(cfg, mode, args, s, env, row, record, say)
                except Exception as err:  # noqa: BLE001 - a failed run is recorded; OOM is a data point
                    row["status"] = "oom" if is_memory_error(err) else "error"
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
                    if row["status"] == "error" and run_ is not None:
                        run_.fail(f"{mode} @ {seq}: {row['error']}")
                    say(f"{mode} @ {seq}: {row['status'].upper()} {row['error']}")
                    _release(env)
                    record("run", row)
                    break
                record("run", row)
        _summarise(result)
    dist.destroy_process_group()
    return result


def _one_run(cfg, mode: str, args, s: dict, env, row: dict, record, say) -> None:
    from labkit.train import checkpoint as ck
    from labkit.train import fsdp_qat as fq

    fq.check_config(cfg, env.world_size)
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(env.device)
    t0 = time.perf_counter()
    model = fq.build_model(cfg, env.device)
    fq.shard_model(model, cfg, env.device)
    row["build_s"] = round(time.perf_counter() - t0, 1)
    blocks = _blocks(s["data"], args.model, cfg.seq_len, model.config.vocab_size, cfg)
    row.update(_predicted(model, cfg, env.world_size, mode), data=s["data"], blocks=len(blocks),
               parameters=_param_count(model))
    optimizer = fq.make_optimizer(model, cfg)
    start = 0
    if args.from_checkpoint:
        start = ck.load_checkpoint(args.checkpoint_dir, model, optimizer)["step"]
        row["resumed_from"] = start
        say(f"resumed from {args.checkpoint_dir} at step {start}")
    stop = args.stop_after or cfg.steps
    say(f"{mode} @ {cfg.seq_len} tokens x {cfg.global_batch}: steps {start}..{stop - 1} "
        f"(model {row['parameters'] / 1e9:.3f} B params, predicted peak {row['predicted_gib']:.1f} GiB/GPU)")

    def on_step(rec) -> None:
        if env.is_main:
            d = {"mode": mode, "seq_len": cfg.seq_len, **rec.as_dict()}
            row["steps"].append(d)
            record("step", d)
            print(f"  step {rec.step:4d} loss {rec.loss:.4f} {rec.tokens_per_s:10.0f} tok/s "
                  f"peak {rec.peak_gib if rec.peak_gib is not None else float('nan'):.2f} GiB", flush=True)
        if args.checkpoint_dir and args.checkpoint_every and (rec.step + 1) % args.checkpoint_every == 0:
            ck.save_checkpoint(args.checkpoint_dir, model, optimizer, rec.step + 1)

    compiling = cfg.compile_layers or (cfg.compile_fake_quant and cfg.qat)
    before = _compile_wall_s() if compiling else 0.0
    fq.train(model, blocks, cfg, env, start_step=start, stop_step=stop, optimizer=optimizer, on_step=on_step)
    if compiling:  # torch.compile's own clock (Dynamo + Inductor, forward and backward graphs) on this rank
        row["compile_s"] = round(_compile_wall_s() - before, 1)
    if args.checkpoint_dir and not args.checkpoint_every:
        ck.save_checkpoint(args.checkpoint_dir, model, optimizer, stop)
    row["status"] = "ok"
    if args.export_int8:
        say(f"gathering, converting to INT8 and saving to {args.export_int8}")
        t1 = time.perf_counter()
        row["export"] = ck.export_int8(model, cfg, env, args.export_int8, sample=blocks[:1])
        row["export"]["seconds"] = round(time.perf_counter() - t1, 1)
    del model, optimizer
    _release(env)


def _compile_wall_s() -> float:
    """Seconds torch.compile has spent in this process so far (0 if PyTorch does not report it)."""
    try:
        from torch._dynamo.utils import calculate_time_spent

        return float(calculate_time_spent().get("total_wall_time", 0.0))
    except Exception:  # noqa: BLE001 - a private helper: its absence must not fail a run
        return 0.0


def _param_count(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _release(env) -> None:
    import gc

    gc.collect()
    if env.device.type == "cuda":
        torch.cuda.empty_cache()


def _summarise(result: dict) -> None:
    """Per run: median tokens/s after the warm-up steps, peak memory, measured / predicted."""
    import statistics

    for row in result["runs"]:
        steps = row.get("steps") or []
        if not steps:
            continue
        timed = steps[2:] if len(steps) > 3 else steps[1:] or steps
        row["tokens_per_s"] = round(statistics.median(r["tokens_per_s"] for r in timed), 1)
        row["losses"] = [r["loss"] for r in steps]
        row["first_step_s"] = round(steps[0]["step_s"], 2)  # includes CUDA warm-up and any compilation
        peaks = [r["peak_gib"] for r in steps if r["peak_gib"] is not None]
        if peaks:
            row["peak_gib"] = round(max(peaks), 3)
            row["measured_over_predicted"] = round(row["peak_gib"] / row["predicted_gib"], 3)
    ok = {}
    for row in result["runs"]:
        if row["status"] == "ok":
            ok[row["mode"]] = max(ok.get(row["mode"], 0), row["seq_len"])
    result["longest_seq_trained"] = ok


def _command(args) -> str:
    """The one command that made this file, as typed (through `labkit.bench` or this module directly)."""
    nproc = os.environ.get("WORLD_SIZE", "1")
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    if getattr(args, "experiment", None):        # labkit.cli: argv starts with the experiment's name
        entry, argv = "labkit.bench", argv
    else:
        entry = f"labkit.experiments.{EXPERIMENT}"
    return f"torchrun --nproc-per-node {nproc} -m {entry} " + " ".join(shlex.quote(a) for a in argv)


def main(argv: list[str] | None = None) -> int:
    from labkit.results.run import EXIT_CODES

    parser = argparse.ArgumentParser(prog=f"torchrun -m labkit.experiments.{EXPERIMENT}",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("quick", "full"), default=None)
    parser.add_argument("--out", default=None, help=f"result file or folder (default: runs/{EXPERIMENT}_...)")
    parser.add_argument("--resume", action="store_true", help="continue the run of --out, skipping finished runs")
    parser.add_argument("--update-reference", action="store_true", help=argparse.SUPPRESS)  # refused: see validate
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        check(args)
    except ValueError as err:
        parser.error(str(err))
    return EXIT_CODES.get(run(args).get("status"), 0)


if __name__ == "__main__":
    sys.exit(main())
