"""Prefill latency and peak memory of a causal LM against sequence length, per attention backend.

What is measured: one full forward pass `model(input_ids, use_cache=False, logits_to_keep=1)` over
batch x N random tokens (prefill without keeping a KV cache; logits of the last token only, so the
vocabulary projection does not dominate memory at long N).

    GPU  latency: CUDA events, warm-up, median of repeats; memory: torch.cuda.max_memory_allocated, statistics
         reset just before each point (weights included). The model is built once and switched between backends.
    CPU  one fresh subprocess per point; memory: the process's peak resident set size (VmHWM, reset after the
         model is built so it covers the forward passes), labelled CPU RAM. Weights, Python and torch included.

Out-of-memory is a data point (oom=True), never a crash; other failures are recorded with their message.
Each finished point is appended to a JSONL file at once, so an interrupted sweep keeps what it measured.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from labkit.bench.timing import cuda_peak_gib, is_oom, time_callable

GIB = 2**30
POINT_MARKER = "LABKIT_POINT "
CPU_OOM_MESSAGES = ("can't allocate memory", "cannot allocate memory", "out of memory")


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
        from labkit.attention import set_backend
        from labkit.models import EMBEDDED_CAUSAL_LMS, build_from_shape, load_causal_lm

        dtype = self.torch_dtype(device)
        if self.name in EMBEDDED_CAUSAL_LMS:
            model, _ = load_causal_lm(self.name, dtype=dtype, device=device)
        else:
            model = build_from_shape(self.name, dtype=dtype, device=device, num_layers=self.num_layers)
        return set_backend(model, backend)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Point:
    """One (backend, sequence length) measurement. `ok` False means it failed (see `oom` and `error`)."""

    backend: str
    seq_len: int
    batch_size: int
    ok: bool
    oom: bool = False
    skipped: bool = False
    latency_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    repeats: int = 0
    peak_gib: float | None = None
    memory_kind: str | None = None  # "cuda_max_allocated" | "cpu_peak_rss" | None (not measured)
    baseline_gib: float | None = None  # memory just before the forward passes (weights, runtime)
    tokens_per_s: float | None = None
    device: str = ""
    model: str = ""
    dtype: str = ""
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def default_repeats(seq_len: int, device: torch.device | str) -> tuple[int, int]:
    """(warmup, repeat) by length: enough for a stable median, few at long N to keep the sweep short."""
    if torch.device(device).type != "cuda":
        return 1, 3
    if seq_len <= 4096:
        return 2, 10
    if seq_len <= 8192:
        return 1, 5
    if seq_len <= 16384:
        return 1, 3
    return 1, 2


def is_memory_error(err: BaseException) -> bool:
    """Out of memory on the GPU or the CPU (torch's CPU allocator says "can't allocate memory")."""
    return is_oom(err) or isinstance(err, MemoryError) or any(m in str(err).lower() for m in CPU_OOM_MESSAGES)


def random_input_ids(model: torch.nn.Module, seq_len: int, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """batch x seq_len random token ids on the model's device (content does not change speed or memory)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen)
    return ids.to(device)


def prefill_callable(model: torch.nn.Module, input_ids: torch.Tensor) -> Callable[[], object]:
    """The measured call: a full forward without KV cache, logits of the last position only."""
    return lambda: model(input_ids=input_ids, use_cache=False, logits_to_keep=1)


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _rss_gib(field_name: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: write 5 to /proc/self/clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gib() -> float:
    hwm = _rss_gib("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: kilobytes


def measure_prefill(model: torch.nn.Module, seq_len: int, backend: str | None = None, batch_size: int = 1,
                    warmup: int | None = None, repeat: int | None = None, seed: int = 0) -> Point:
    """Latency and peak memory of one prefill at `seq_len`, in this process (reusable by other benchmarks).

    On a GPU the peak is torch.cuda.max_memory_allocated with statistics reset first. On a CPU the peak is this
    process's peak RSS since a reset just before the forward passes (honest only in a fresh process: use
    `run_point_subprocess` for CPU sweeps). Out-of-memory and other failures return a failed Point.
    """
    from labkit.attention import get_backend, set_backend

    if backend is not None:
        set_backend(model, backend)
    backend = get_backend(model)
    param = next(model.parameters())
    device = param.device
    w, r = default_repeats(seq_len, device)
    warmup, repeat = (w if warmup is None else warmup), (r if repeat is None else repeat)
    point = Point(backend=backend, seq_len=seq_len, batch_size=batch_size, ok=False, device=str(device),
                  model=getattr(model.config, "_name_or_path", "") or type(model).__name__,
                  dtype=str(param.dtype).removeprefix("torch."))
    failure: tuple[bool, str] | None = None
    try:
        ids = random_input_ids(model, seq_len, batch_size, seed)
        fn = prefill_callable(model, ids)
        if device.type == "cuda":
            _release_memory(device)
            point.baseline_gib = torch.cuda.memory_allocated(device) / GIB
            point.peak_gib = cuda_peak_gib(fn, device)  # also the first warm-up call
            point.memory_kind = "cuda_max_allocated"
            timing = time_callable(fn, device=device, warmup=max(warmup - 1, 0), repeat=repeat)
        else:
            gc.collect()
            point.baseline_gib = _rss_gib("VmRSS")
            reset = _reset_peak_rss()
            timing = time_callable(fn, device=device, warmup=warmup, repeat=repeat)
            point.peak_gib = _peak_rss_gib()
            point.memory_kind = "cpu_peak_rss" if reset else "cpu_peak_rss_since_start"
        point.latency_ms, point.p10_ms, point.p90_ms = timing.median_ms, timing.p10_ms, timing.p90_ms
        point.repeats = timing.repeats
        point.tokens_per_s = batch_size * seq_len / (timing.median_ms / 1e3)
        point.ok = True
    except Exception as err:  # noqa: BLE001 - every failure becomes a recorded point
        failure = (is_memory_error(err), f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}")
        del err
    if failure is not None:
        point.oom, point.error = failure
        point.peak_gib = None
        ids = fn = None  # drop references to the failed call's tensors before emptying the cache
        _release_memory(device)
    return point


# ---------------------------------------------------------------------------------------------------------------
# one subprocess per point (CPU): an honest peak RSS


def run_point_subprocess(spec: ModelSpec, backend: str, seq_len: int, batch_size: int = 1,
                         warmup: int | None = None, repeat: int | None = None, timeout_s: float = 600) -> Point:
    """Measure one point on the CPU in a fresh Python process and return its Point (failures included)."""
    job = {"spec": spec.as_dict(), "backend": backend, "seq_len": seq_len, "batch_size": batch_size,
           "warmup": warmup, "repeat": repeat}
    cmd = [sys.executable, "-m", "labkit.bench.sweep", "--worker", json.dumps(job)]
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
                      error=f"building the model failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
    else:
        point = measure_prefill(model, job["seq_len"], None, job["batch_size"], job["warmup"], job["repeat"])
        point.model = spec.name
    print(POINT_MARKER + json.dumps(point.as_dict()), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# the sweep


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one row to a JSONL file and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file (a truncated last line, from an interrupted write, is ignored)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


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
) -> list[dict]:
    """Measure every (backend, N) point and return the rows (dicts of `Point`).

    model: a ModelSpec / shape name (rebuilt as needed) or a built transformers model (in-process only).
    isolate: one subprocess per point (default on a CPU, for an honest peak RSS; not available on a GPU).
    skip_after_failure: after a backend fails at some N, its longer N are recorded as skipped, not run.
    cpu_budget_gib: on a CPU, points the memory model predicts above this are skipped (default: half the
        available RAM) so a sweep cannot swamp a shared machine.
    verify: profile one short forward per backend and store which kernel ran (`labkit.attention.verify_backend`).
    Unavailable backends give one skipped row per length with the reason. Rows are appended to `out` (JSONL)
    and passed to `on_point` as each point finishes.
    """
    from tqdm.auto import tqdm

    from labkit.attention import unavailable_reason, verify_backend
    from labkit.attention.memory_model import ModelShape, predicted_peak_bytes

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
        from labkit.models import shape_config

        config = shape_config(spec.name, spec.num_layers)
    shape = ModelShape.from_config(config)
    if cpu_budget_gib is None and device.type == "cpu":
        import psutil

        cpu_budget_gib = psutil.virtual_memory().available / GIB / 2
    model_label = getattr(spec, "name", None) or getattr(config, "_name_or_path", "") or "model"

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
        reason = unavailable_reason(backend, device, dtype)
        stop: str | None = None  # why longer lengths of this backend are not run
        evidence: dict | None = None
        if reason is None and not isolate:
            try:
                if live_model is None:
                    live_model = spec.build(device, backend)
                from labkit.attention import set_backend

                set_backend(live_model, backend)
                if verify:
                    ev = verify_backend(live_model, backend, random_input_ids(live_model, min(seq_lens), batch_size),
                                        strict=False)
                    evidence = {"families": ev.families, "cuda_kernels": ev.cuda_kernels[:4], "ok": ev.ok}
            except Exception as err:  # noqa: BLE001
                reason = f"could not be selected: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
        for n in seq_lens:
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
        sys.exit("usage: python -m labkit.bench.sweep --worker JOB_JSON (used by labkit.bench.sweep.sweep)")
