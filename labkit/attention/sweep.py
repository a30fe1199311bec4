"""Prefill latency and peak memory of a causal LM against sequence length, per attention backend.

What is measured: one full forward pass per point (labkit.measure.prefill: prefill without keeping a KV cache,
logits of the last token only, so the vocabulary projection does not dominate memory at long N).

    GPU  latency: CUDA events, warm-up, median of repeats; memory: torch.cuda.max_memory_allocated, statistics
         reset just before each point (weights included). The model is built once and switched between backends.
    CPU  one fresh subprocess per point; memory: the process's peak resident set size (VmHWM, reset after the
         model is built so it covers the forward passes), labelled CPU RAM. Weights, Python and torch included.

Out-of-memory is a data point (oom=True), never a crash; other failures are recorded with their message.
Each finished point is appended to a JSONL file at once, so an interrupted sweep keeps what it measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from labkit.attention.backends import get_backend, set_backend, unavailable_reason
from labkit.attention.memory_model import ModelShape, predicted_peak_bytes
from labkit.attention.verify import verify_backend
from labkit.measure.memory import GIB, error_text, is_memory_error
from labkit.measure.prefill import Point, prefill_point, random_input_ids
from labkit.models import EMBEDDED_CAUSAL_LMS, build_from_shape, load_causal_lm, shape_config
from labkit.results.files import append_jsonl

POINT_MARKER = "LABKIT_POINT "


@dataclass
class ModelSpec:
    """A model the sweep can rebuild anywhere (also in a worker subprocess).

    name: a labkit shape ("llama-2-7b", "tiny-llama", ...; random weights) or "smollm2-135m" (embedded, trained).
    dtype: a torch dtype name; None: bfloat16 on a GPU, float32 on a CPU.
    """

    name: str = "tiny-llama"
    dtype: str | None = None
    num_layers: int | None = None

    def torch_dtype(self, device: torch.device | str) -> torch.dtype:
        if self.dtype is not None:
            return getattr(torch, self.dtype)
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32

    def build(self, device: torch.device | str, backend: str = "sdpa") -> torch.nn.Module:
        """The model in eval mode on `device`, attention set to `backend`."""
        dtype = self.torch_dtype(device)
        if self.name in EMBEDDED_CAUSAL_LMS:
            model, _ = load_causal_lm(self.name, dtype=dtype, device=device)
        else:
            model = build_from_shape(self.name, dtype=dtype, device=device, num_layers=self.num_layers)
        return set_backend(model, backend)

    def as_dict(self) -> dict:
        return asdict(self)


def measure_prefill(model: torch.nn.Module, seq_len: int, backend: str | None = None, batch_size: int = 1,
                    warmup: int | None = None, repeat: int | None = None, seed: int = 0) -> Point:
    """Latency and peak memory of one prefill at `seq_len` with attention `backend` (default: as the model is),
    in this process (labkit.measure.prefill.prefill_point). On a CPU use `run_point_subprocess` for an honest
    peak RSS. Out-of-memory and other failures return a failed Point."""
    if backend is not None:
        set_backend(model, backend)
    return prefill_point(model, seq_len, batch_size, warmup=warmup, repeat=repeat, seed=seed,
                         backend=get_backend(model))


# ---------------------------------------------------------------------------------------------------------------
# one subprocess per point (CPU): an honest peak RSS


def run_point_subprocess(spec: ModelSpec, backend: str, seq_len: int, batch_size: int = 1,
                         warmup: int | None = None, repeat: int | None = None, timeout_s: float = 600) -> Point:
    """Measure one point on the CPU in a fresh Python process and return its Point (failures included)."""
    job = {"spec": spec.as_dict(), "backend": backend, "seq_len": seq_len, "batch_size": batch_size,
           "warmup": warmup, "repeat": repeat}
    cmd = [sys.executable, "-m", "labkit.attention.sweep", "--worker", json.dumps(job)]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "CUDA_VISIBLE_DEVICES": ""}
    failed = Point(backend=backend, seq_len=seq_len, batch_size=batch_size, ok=False, device="cpu",
                   model=spec.name, dtype=str(spec.torch_dtype("cpu")).removeprefix("torch."))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        failed.error = f"timed out after {timeout_s:.0f} s"
        return failed
    for line in proc.stdout.splitlines():
        if line.startswith(POINT_MARKER):
            return Point(**json.loads(line[len(POINT_MARKER):]))
    if proc.returncode in (-9, 137):
        failed.oom, failed.error = True, "worker killed by SIGKILL (most likely the kernel's out-of-memory killer)"
    else:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        failed.error = f"worker exited with {proc.returncode}: {tail[:300]}"
    return failed


def _worker(job_json: str) -> None:
    job = json.loads(job_json)
    spec = ModelSpec(**job["spec"])
    try:
        model = spec.build("cpu", job["backend"])
    except Exception as err:  # noqa: BLE001
        point = Point(backend=job["backend"], seq_len=job["seq_len"], batch_size=job["batch_size"], ok=False,
                      oom=is_memory_error(err), device="cpu", model=spec.name,
                      error=f"building the model failed: {error_text(err)}")
    else:
        point = measure_prefill(model, job["seq_len"], None, job["batch_size"], job["warmup"], job["repeat"])
        point.model = spec.name
    print(POINT_MARKER + json.dumps(point.as_dict()), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# the sweep


def sweep(
    model: ModelSpec | str | torch.nn.Module,
    backends: Iterable[str],
    seq_lens: Iterable[int],
    batch_size: int = 1,
    device: torch.device | str | None = None,
    out: str | Path | None = None,
    on_point: Callable[[dict], None] | None = None,
    progress: bool = True,
    isolate: bool | None = None,
    skip_after_failure: bool = True,
    cpu_budget_gib: float | None = None,
    verify: bool = False,
    previous: Iterable[dict] = (),
) -> list[dict]:
    """Measure every (backend, N) point and return the rows (dicts of `Point`).

    model: a ModelSpec / shape name (rebuilt as needed) or a built transformers model (in-process only).
    isolate: one subprocess per point (default on a CPU, for an honest peak RSS; not available on a GPU).
    skip_after_failure: after a backend fails at some N, its longer N are recorded as skipped, not run.
    cpu_budget_gib: on a CPU, points the memory model predicts above this are skipped (default: half the
        available RAM) so a sweep cannot swamp a shared machine.
    verify: profile one short forward per backend and store which kernel ran (`labkit.attention.verify_backend`).
    previous: rows an interrupted sweep already measured (its JSONL): those points are not measured again.
    Unavailable backends give one skipped row per length with the reason. Rows are appended to `out` (JSONL)
    and passed to `on_point` as each point finishes.
    """
    from tqdm.auto import tqdm

    spec = ModelSpec(model) if isinstance(model, str) else model
    built = spec if isinstance(spec, torch.nn.Module) else None
    if device is None:
        device = next(built.parameters()).device if built is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    device = torch.device(device)
    if isolate is None:
        isolate = device.type == "cpu" and built is None
    if isolate and (device.type != "cpu" or built is not None):
        raise ValueError("isolate=True (one subprocess per point) works for a ModelSpec on the CPU only")
    backends, seq_lens = list(backends), sorted(int(n) for n in seq_lens)
    if not backends or not seq_lens:
        raise ValueError("give at least one backend and one sequence length")
    dtype = next(built.parameters()).dtype if built is not None else spec.torch_dtype(device)
    config = built.config if built is not None else None
    if config is None:  # labkit's SHAPES hold the embedded models' shapes too
        config = shape_config(spec.name, spec.num_layers)
    shape = ModelShape.from_config(config)
    if cpu_budget_gib is None and device.type == "cpu":
        import psutil

        cpu_budget_gib = psutil.virtual_memory().available / GIB / 2
    model_label = getattr(spec, "name", None) or getattr(config, "_name_or_path", "") or "model"

    done = {(r["backend"], r["seq_len"]): r for r in previous}
    rows: list[dict] = []
    bar = tqdm(total=len(backends) * len(seq_lens), desc="sweep", disable=not progress, leave=True)

    def emit(point: Point) -> None:
        row = point.as_dict()
        rows.append(row)
        if out is not None:
            append_jsonl(out, row)
        bar.update(1)
        bar.set_postfix_str(f"{point.backend} N={point.seq_len} "
                            + ("ok" if point.ok else "OOM" if point.oom else "skipped" if point.skipped else "failed"))
        if on_point is not None:
            on_point(row)

    live_model = built
    for backend in backends:
        todo = [n for n in seq_lens if (backend, n) not in done]
        reason = unavailable_reason(backend, device, dtype) if todo else "already measured"
        stop: str | None = None  # why longer lengths of this backend are not run
        evidence: dict | None = None
        if reason is None and not isolate:
            try:
                if live_model is None:
                    live_model = spec.build(device, backend)
                set_backend(live_model, backend)
                if verify:
                    ev = verify_backend(live_model, backend, random_input_ids(live_model, min(seq_lens), batch_size),
                                        strict=False)
                    evidence = {"families": ev.families, "cuda_kernels": ev.cuda_kernels[:4], "ok": ev.ok}
            except Exception as err:  # noqa: BLE001
                reason = f"could not be selected: {error_text(err)}"
        for n in seq_lens:
            if (backend, n) in done:  # measured by the run this one resumes
                row = done[(backend, n)]
                rows.append(row)
                bar.update(1)
                if not row["ok"] and not row.get("skipped"):
                    stop = f"{'out of memory' if row.get('oom') else 'failed'} at N={n}"
                elif row.get("skipped") and row.get("error", "").startswith("not run"):
                    stop = row["error"].removeprefix("not run: ")
                continue
            base = dict(backend=backend, seq_len=n, batch_size=batch_size, device=str(device), model=model_label,
                        dtype=str(dtype).removeprefix("torch."))
            if reason is not None:
                emit(Point(ok=False, skipped=True, error=f"unavailable: {reason}", **base))
                continue
            if stop is not None and skip_after_failure:
                emit(Point(ok=False, skipped=True, error=f"not run: {stop}", **base))
                continue
            if device.type == "cpu" and cpu_budget_gib is not None:
                predicted = predicted_peak_bytes(shape, n, backend, batch_size, dtype) / GIB
                if predicted > cpu_budget_gib:
                    emit(Point(ok=False, skipped=True, error=f"not run: the memory model predicts {predicted:.1f} "
                               f"GiB, above the CPU budget of {cpu_budget_gib:.1f} GiB", **base))
                    stop = f"N={n} was already over the CPU budget"
                    continue
            t0 = time.perf_counter()
            if isolate:
                point = run_point_subprocess(spec, backend, n, batch_size)
            else:
                point = measure_prefill(live_model, n, None, batch_size)
                point.model = model_label
            point.extra["wall_s"] = round(time.perf_counter() - t0, 2)
            if evidence is not None:
                point.extra["kernel_evidence"] = evidence
            if not point.ok:
                stop = f"{'out of memory' if point.oom else 'failed'} at N={n}"
            emit(point)
    bar.close()
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        sys.exit("usage: python -m labkit.attention.sweep --worker JOB_JSON (used by labkit.attention.sweep.sweep)")
