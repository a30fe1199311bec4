"""Environment report and run profile: what this machine can run, and how long to run it."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from dataclasses import asdict, dataclass, field

import torch

PROFILE_VARIABLE = "LABKIT_PROFILE"
PROFILES = ("quick", "full")

_PACKAGES = ("torch", "transformers", "torchao", "triton", "flash-attn", "datasets", "evaluate", "accelerate")


def get_profile() -> str:
    """The run profile: `$LABKIT_PROFILE` if set, else `full` with a CUDA GPU and `quick` without."""
    value = os.environ.get(PROFILE_VARIABLE, "").strip().lower()
    if not value:
        return "full" if torch.cuda.is_available() else "quick"
    if value not in PROFILES:
        raise ValueError(
            f"{PROFILE_VARIABLE}={value!r} is not a profile; use one of {', '.join(PROFILES)} "
            f"(quick: minutes on a CPU laptop or CI; full: the real experiment)."
        )
    return value


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

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        width = max(len(k) for k in self.versions) + 2
        lines = [
            f"profile        {self.profile}  (set {PROFILE_VARIABLE}=quick|full to change)",
            f"device         {self.device}: {self.device_name}"
            + (f" (compute capability {self.compute_capability})" if self.compute_capability else ""),
            f"cpu            {self.cpu}, torch uses {self.threads} threads",
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
    )


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
        "threads": rep.threads,
        "python": rep.python,
        "cuda": rep.cuda,
        "cudnn": rep.cudnn,
        "driver": rep.driver,
        "versions": rep.versions,
        "profile": profile,
    }
