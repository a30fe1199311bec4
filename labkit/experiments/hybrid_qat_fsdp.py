"""`torchrun --nproc-per-node N -m labkit.bench hybrid-qat`: the hybrid's QAT sharded over N GPUs with FSDP2
(notebook 04). For each mode (qat-w8a8, qat-w8: feed-forward layers fake-quantized; plain: the same fine-tune
without QAT) and sequence length (shortest first; out-of-memory is a data point and ends that mode's longer
lengths): build, shard (labkit.train.fsdp_qat), train, and record every step (loss, tokens/s, the worst GPU's peak
memory beside the memory model's prediction) and each finished run. Optional: sharded checkpoints, the QAT model
exported in INT8. Models: an embedded or hub model, or a labkit shape with random weights (speed and memory only).
The committed reference joins several runs (labkit.experiments.hybrid_qat_fsdp_results.combine).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.experiments import protocol
from labkit.experiments.hybrid_qat_fsdp_results import evaluate
from labkit.experiments.protocol import flag
from labkit.measure.memory import error_text, is_memory_error, release_memory
from labkit.measure.stats import Target
from labkit.quant.selection import LAYER_PRESETS
from labkit.results.files import device_slug

NAME = "hybrid_qat_fsdp"
MODES = {"qat-w8a8": "int8-dynamic", "qat-w8": None, "plain": None}


def _cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("LABKIT_FSDP_DEVICE", "") != "cpu"


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Settings(protocol.Settings):
    model: str = flag("smollm2-135m", "embedded name (smollm2-135m), hub id or local folder, or a shape (llama-2-7b, "
                                      "llama-3-8b, tiny-llama: random weights)")
    random_weights: bool = flag(False, "build the shape of --model with random weights (speed and memory only)")
    num_layers: int | None = flag(None, "fewer decoder layers (random weights only)")
    modes: tuple[str, ...] = flag(("qat-w8a8",), f"comma-separated: {','.join(MODES)}", choices=tuple(MODES))
    layers: str = flag("feed-forward", "layers to fake-quantize: feed-forward, all-linear, or a regex on module names")
    seq_lens: tuple[int, ...] | None = flag(None, "comma-separated sequence lengths (default: by profile)")
    steps: int | None = flag(None, "optimizer steps per run (default: by profile)")
    global_batch: int | None = flag(None, "sequences per step over all processes; a multiple of the process count")
    lr: float | None = flag(None, "peak learning rate (default: by profile)")
    seed: int = flag(0, "seed", parse=int)
    data: str = flag("auto", "auto (WikiText-2 validation for trained models, random tokens for random weights), "
                             "wikitext2, random, or a .safetensors file with an [n, len] 'input_ids' tensor")
    attention: str | None = flag(None, "labkit backend (default: fa2 on a GPU, sdpa on a CPU)")
    compile_fake_quant: bool = flag(False, "torch.compile each fake quantizer (fuses its elementwise passes; same "
                                           "numerics)")
    compile_layers: bool = flag(False, "torch.compile each decoder layer's forward (fake quantizers, norms, SwiGLU "
                                       "fused with their neighbours; FSDP2 hooks and activation checkpointing stay "
                                       "around it)")
    checkpointing: bool = flag(True, "turn activation checkpointing off")
    checkpoint_dir: str | None = flag(None, "folder for sharded checkpoints (DCP)")
    checkpoint_every: int = flag(0, "save every k steps (0: at the end only)", parse=int)
    from_checkpoint: bool = flag(False, "start from the sharded checkpoint in --checkpoint-dir (a run stopped by "
                                        "--stop-after)")
    stop_after: int | None = flag(None, "stop after this many steps (then resume)")
    export_int8: str | None = flag(None, "folder: save the converted INT8 + FA2 model there")

    def device_slug(self) -> str:
        n = _world_size()
        return device_slug("cuda" if _cuda() else "cpu") + (f"x{n}" if n > 1 else "")

    def resolved(self, world_size: int) -> dict:
        """The profile's defaults filled in and every argument checked (ValueError naming the flag) before any model
        loads: modes, model, lengths, steps, batch, data, checkpoints, export, attention."""
        from labkit.attention.backends import unavailable_reason
        from labkit.models import EMBEDDED_CAUSAL_LMS, SHAPES, _canonical

        key, cuda, quick = _canonical(self.model), _cuda(), self.profile == "quick"
        shape_only = key in SHAPES and key not in EMBEDDED_CAUSAL_LMS
        if self.random_weights and key not in SHAPES:
            raise ValueError(f"--random-weights needs a known shape, not {self.model!r}; shapes: {', '.join(SHAPES)}")
        if self.num_layers is not None and not (shape_only or self.random_weights):
            raise ValueError("--num-layers applies to random-weight shapes only; add --random-weights")
        if not (shape_only or self.random_weights or key in EMBEDDED_CAUSAL_LMS or "/" in self.model
                or Path(self.model).is_dir()):
            raise ValueError(f"--model {self.model!r} is not an embedded model ({', '.join(EMBEDDED_CAUSAL_LMS)}), "
                             f"a shape ({', '.join(SHAPES)}), a hub id 'org/name' or a local folder")
        random = shape_only or self.random_weights
        seq_lens = sorted(self.seq_lens or ([128] if quick else [1024 if not random or not cuda else 4096]))
        steps = self.steps or (8 if quick else 50)
        batch = self.global_batch or (2 * world_size if quick else max(8, world_size))
        if min(seq_lens) < 8:
            raise ValueError(f"--seq-lens {','.join(map(str, seq_lens))}: every length must be >= 8")
        if batch % world_size:
            raise ValueError(f"--global-batch {batch}: a batch that is a positive multiple of the {world_size} "
                             "process(es)")
        data = self.data
        if data not in ("auto", "wikitext2", "random") and not (data.endswith(".safetensors") and Path(data).is_file()):
            raise ValueError(f"--data {data!r}: use auto, wikitext2, random or an existing .safetensors file")
        if data == "wikitext2" and random:
            raise ValueError("--data wikitext2 needs a tokenizer: random-weight shapes train on --data random or a file")
        if (self.from_checkpoint or self.checkpoint_every) and not self.checkpoint_dir:
            raise ValueError("--from-checkpoint / --checkpoint-every need --checkpoint-dir FOLDER")
        if self.from_checkpoint and not (Path(self.checkpoint_dir) / "trainer.json").is_file():
            raise ValueError(f"--from-checkpoint: {self.checkpoint_dir} holds no checkpoint (no trainer.json)")
        if (self.checkpoint_dir or self.export_int8) and (len(self.modes) > 1 or len(seq_lens) > 1):
            raise ValueError("--checkpoint-dir / --export-int8 take one mode and one sequence length")
        if self.export_int8 and self.modes[0] == "plain":
            raise ValueError("--export-int8 needs a QAT mode (qat-w8a8 or qat-w8), not plain")
        if self.compile_layers and self.compile_fake_quant:
            raise ValueError("--compile-layers already compiles the fake quantizers inside each layer: drop "
                             "--compile-fake-quant")
        if self.compile_layers and self.export_int8:
            raise ValueError("--compile-layers is for speed runs: export INT8 (--export-int8) from a run without it")
        if self.stop_after is not None and not self.stop_after <= steps:
            raise ValueError(f"--stop-after {self.stop_after} must be between 1 and --steps ({steps})")
        attention = self.attention or ("fa2" if cuda else "sdpa")
        if why := unavailable_reason(attention, "cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float32):
            raise ValueError(f"--attention {attention}: {why}")
        return dict(seq_lens=seq_lens, steps=steps, global_batch=batch, lr=self.lr or (1e-4 if random else 2e-5),
                    random=random, data=("random" if random else "wikitext2") if data == "auto" else data,
                    attention=attention, cuda=cuda)


def check(settings: Settings, options) -> None:
    if options.update_reference:
        raise ValueError(f"--update-reference: data/reference/{NAME}_<gpu>x<N>.json combines several runs (the shape "
                         "sweep, the 1- vs N-process loss match and its re-run); run each into its own --out, then "
                         "join the complete full-profile ones with labkit.experiments.hybrid_qat_fsdp_results.combine")
    settings.resolved(_world_size())


def measure(settings: Settings, run) -> None:
    """Every (mode, sequence length) the run's JSONL does not hold yet; rank 0 records the results."""
    import torch.distributed as dist

    from labkit.train import fsdp_qat as fq

    s = settings.resolved(_world_size())
    if not s["cuda"]:
        os.environ["LABKIT_FSDP_DEVICE"] = "cpu"
    env = fq.init_distributed()
    result = run.result
    result.update(world_size=env.world_size, seed=settings.seed, settings=s, runs=[], notes=[])
    result["config"].update(s)
    # every rank skips the same finished runs (trained, or out of memory: a data point; a run that errored is tried
    # again): rank 0 reads them from the JSONL and tells the others
    finished = [{(r["mode"], r["seq_len"]): r for r in run.recorded("run") if r["status"] in ("ok", "oom")}]
    if env.world_size > 1:
        dist.broadcast_object_list(finished, src=0)
    finished, started = finished[0], time.perf_counter()

    def say(msg: str) -> None:
        if env.is_main:
            print(f"[{NAME} {time.perf_counter() - started:6.1f} s] {msg}", flush=True)

    if s["random"]:
        result["notes"].append(f"{settings.model}: random weights, for speed and memory only (losses mean nothing)")
    say(f"{env.world_size} process(es) on {env.device.type}")
    try:
        for mode in settings.modes:
            for seq in s["seq_lens"]:
                if (mode, seq) in finished:
                    row = finished[(mode, seq)]
                    result["runs"].append(row)
                    say(f"{mode} @ {seq}: {row['status']} in an earlier attempt, not run again")
                    if row["status"] != "ok":
                        break  # out of memory there: the longer lengths of this mode are not tried
                    continue
                cfg = fq.TrainConfig(model=settings.model, random_weights=settings.random_weights,
                                     num_layers=settings.num_layers, qat=mode != "plain",
                                     layers=LAYER_PRESETS.get(settings.layers, settings.layers), activations=MODES[mode],
                                     seq_len=seq, global_batch=s["global_batch"], steps=s["steps"], lr=s["lr"],
                                     seed=settings.seed, checkpointing=settings.checkpointing, attention=s["attention"],
                                     compile_fake_quant=settings.compile_fake_quant,
                                     compile_layers=settings.compile_layers)
                row = {"mode": mode, "seq_len": seq, "config": cfg.as_dict(), "status": "running", "steps": []}
                result["runs"].append(row)
                try:
                    _one_run(cfg, mode, settings, s, env, row, run, say)
                except Exception as err:  # noqa: BLE001 - a failed run is recorded; OOM is a data point
                    row.update(status="oom" if is_memory_error(err) else "error", error=error_text(err))
                    if row["status"] == "error":
                        run.fail(f"{mode} @ {seq}: {row['error']}")
                    release_memory(env.device)
                    run.record("run", _summarised(row), quiet=True)
                    break
                run.record("run", _summarised(row), quiet=True)
    finally:
        result["longest_seq_trained"] = {m: max(r["seq_len"] for r in result["runs"] if r["mode"] == m)
                                         for m in {r["mode"] for r in result["runs"] if r["status"] == "ok"}}
        dist.destroy_process_group()


def _one_run(cfg, mode: str, settings: Settings, s: dict, env, row: dict, run, say) -> None:
    from labkit.train import checkpoint as ck
    from labkit.train import fsdp_qat as fq
    from labkit.train.memory_model import GIB, ModelShape, TrainSetup, predicted_training_peak, training_breakdown

    fq.check_config(cfg, env.world_size)
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(env.device)
    t0 = time.perf_counter()
    model = fq.build_model(cfg, env.device)
    fq.shard_model(model, cfg, env.device)
    blocks = _blocks(s["data"], settings.model, cfg.seq_len, model.config.vocab_size, cfg)
    shape = ModelShape.from_config(model.config)
    setup = TrainSetup(world_size=env.world_size, batch_per_gpu=cfg.global_batch // env.world_size,
                       compute_bytes=2 if cfg.compute_dtype in (None, "bfloat16") else 4,
                       checkpointing=cfg.checkpointing, frozen_embeddings=cfg.freeze_embeddings,
                       qat_ff_activations=mode == "qat-w8a8")
    row.update(build_s=round(time.perf_counter() - t0, 1), data=s["data"], blocks=len(blocks),
               parameters=sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
               predicted_gib=round(predicted_training_peak(shape, cfg.seq_len, setup) / GIB, 3),
               predicted_parts_gib={k: round(v / GIB, 3) for k, v in training_breakdown(shape, cfg.seq_len,
                                                                                         setup).items()})
    optimizer = fq.make_optimizer(model, cfg)
    start = 0
    if settings.from_checkpoint:
        start = row["resumed_from"] = ck.load_checkpoint(settings.checkpoint_dir, model, optimizer)["step"]
        say(f"resumed from {settings.checkpoint_dir} at step {start}")
    stop = settings.stop_after or cfg.steps
    say(f"{mode} @ {cfg.seq_len} tokens x {cfg.global_batch}: steps {start}..{stop - 1} "
        f"(model {row['parameters'] / 1e9:.3f} B params, predicted peak {row['predicted_gib']:.1f} GiB/GPU)")

    def on_step(rec) -> None:
        if env.is_main:
            row["steps"].append(run.record("step", {"mode": mode, "seq_len": cfg.seq_len, **rec.as_dict()}))
        if settings.checkpoint_dir and settings.checkpoint_every and (rec.step + 1) % settings.checkpoint_every == 0:
            ck.save_checkpoint(settings.checkpoint_dir, model, optimizer, rec.step + 1)

    compiling = cfg.compile_layers or (cfg.compile_fake_quant and cfg.qat)
    before = _compile_wall_s() if compiling else 0.0
    fq.train(model, blocks, cfg, env, start_step=start, stop_step=stop, optimizer=optimizer, on_step=on_step)
    if compiling:  # torch.compile's own clock (Dynamo + Inductor, forward and backward graphs) on this rank
        row["compile_s"] = round(_compile_wall_s() - before, 1)
    if settings.checkpoint_dir and not settings.checkpoint_every:
        ck.save_checkpoint(settings.checkpoint_dir, model, optimizer, stop)
    row["status"] = "ok"
    if settings.export_int8:
        say(f"gathering, converting to INT8 and saving to {settings.export_int8}")
        t1 = time.perf_counter()
        row["export"] = ck.export_int8(model, cfg, env, settings.export_int8, sample=blocks[:1])
        row["export"]["seconds"] = round(time.perf_counter() - t1, 1)
    del model, optimizer
    release_memory(env.device)


def _blocks(data: str, model: str, seq_len: int, vocab: int, cfg) -> torch.Tensor:
    from labkit.train.fsdp_qat import random_blocks

    if data == "random":
        return random_blocks(vocab, cfg)
    if data == "wikitext2":
        from transformers import AutoTokenizer

        from labkit.lm.perplexity import wikitext_blocks
        from labkit.models import EMBEDDED_CAUSAL_LMS, _canonical, _smollm2_folder

        source = str(_smollm2_folder()) if _canonical(model) in EMBEDDED_CAUSAL_LMS else model
        return wikitext_blocks(AutoTokenizer.from_pretrained(source), "validation", seq_len)
    from safetensors.torch import load_file

    ids = load_file(data)["input_ids"].long()
    if ids.shape[1] < seq_len:
        raise ValueError(f"--data {data}: blocks of {ids.shape[1]} tokens are shorter than --seq-lens {seq_len}")
    return ids[:, :seq_len].contiguous()


def _compile_wall_s() -> float:
    """Seconds torch.compile has spent in this process so far (0 if PyTorch does not report it)."""
    try:
        from torch._dynamo.utils import calculate_time_spent

        return float(calculate_time_spent().get("total_wall_time", 0.0))
    except Exception:  # noqa: BLE001 - a private helper: its absence must not fail a run
        return 0.0


def _summarised(row: dict) -> dict:
    """A finished run with its median tokens/s after the warm-up steps, peak memory, measured / predicted."""
    steps = row.get("steps") or []
    if steps:
        timed = steps[2:] if len(steps) > 3 else steps[1:] or steps
        row.update(tokens_per_s=round(statistics.median(r["tokens_per_s"] for r in timed), 1),
                   losses=[r["loss"] for r in steps], first_step_s=round(steps[0]["step_s"], 2))  # with warm-up
        if peaks := [r["peak_gib"] for r in steps if r["peak_gib"] is not None]:
            row.update(peak_gib=round(max(peaks), 3),
                       measured_over_predicted=round(max(peaks) / row["predicted_gib"], 3))
    return row


def targets(result: dict) -> list[Target]:
    """A combined reference (several runs: labkit.experiments.hybrid_qat_fsdp_results.combine) judged by today's
    rules; a single run: each trained run's peak per GPU within 10% of the training memory model."""
    if "parts" in result:
        return evaluate(result["shape_table"], result.get("loss_match"), rematch=result.get("loss_match_rerun"),
                        run_to_run=result.get("loss_run_to_run"))
    out = [Target.exact(f"{r['mode']} at seq {r['seq_len']}: peak per GPU within 10% of the memory model",
                        f"peak {r['peak_gib']:.2f} GiB vs modelled {r['predicted_gib']:.2f} GiB "
                        f"({r['measured_over_predicted'] - 1:+.1%})", abs(r["measured_over_predicted"] - 1) <= 0.10,
                        r["measured_over_predicted"], 1.0)
           for r in result.get("runs", []) if r.get("status") == "ok" and r.get("measured_over_predicted")]
    return out or [Target.not_measured("peak per GPU within 10% of the memory model",
                                       "no peak GPU memory measured (a CPU run, or nothing trained)")]
