"""Check that every pinned requirement has a wheel on PyPI for the platforms the lab supports.

    python scripts/check_platform_wheels.py                      # macOS arm64 and Linux aarch64, Python 3.11
    python scripts/check_platform_wheels.py --platform all       # and Linux x86_64
    python scripts/check_platform_wheels.py --platform macos-arm64 requirements.txt

For each target platform, each `name==version` line of the requirement files (requirements.txt and
requirements-embedded.txt by default, `-r` includes followed) whose environment marker holds there (evaluated for
that platform, not for this machine) must have a wheel of exactly that version for that platform and Python.
pip answers that question itself: `pip index versions NAME --platform ... --python-version ... --only-binary=:all:`
lists the versions with such a wheel (asked in a few pip processes, each calling pip's command line for several
packages, since starting a process per package costs more than the questions). Lines whose marker excludes the
platform (Triton off Linux) are skipped and listed.

Why not `pip install --dry-run --platform ... -r requirements.txt`: pip evaluates environment markers against the
machine it runs on, not the `--platform` given, so it would resolve Linux-only dependencies (torch's CUDA
packages) for a Mac and fail, or miss a Mac-only one. Dependencies of the pinned packages are therefore not
checked here; the pinned packages declare them per platform themselves.

Exit status: 0 every pin has its wheels; 1 some pin has none (listed); 77 the package index could not be reached,
or did not answer for some pins even when asked again (nothing is claimed about those: the tests skip on it);
2 bad arguments.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILES = ("requirements.txt", "requirements-embedded.txt")
INDEX = "https://pypi.org/simple"
UNREACHABLE = 77


def _manylinux(arch: str) -> list[str]:
    return ([f"manylinux_2_{v}_{arch}" for v in range(28, 16, -1)] + [f"manylinux2014_{arch}"]
            + ([f"manylinux_2_{v}_{arch}" for v in (12, 5)] + [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
               if arch == "x86_64" else []))


@dataclass(frozen=True)
class Target:
    name: str
    system: str        # platform.system()
    machine: str       # platform.machine()
    sys_platform: str
    tags: tuple[str, ...]

    def environment(self, python: str) -> dict[str, str]:
        """PEP 508 marker values on this platform (what `packaging` would see running there)."""
        env = dict(default_environment())
        env.update(platform_system=self.system, platform_machine=self.machine, sys_platform=self.sys_platform,
                   os_name="posix", python_version=python, python_full_version=f"{python}.0",
                   implementation_name="cpython", platform_python_implementation="CPython")
        return env


TARGETS = {
    "macos-arm64": Target("macos-arm64", "Darwin", "arm64", "darwin",
                          tuple(f"macosx_{v}_0_arm64" for v in (15, 14, 13, 12, 11))),
    "linux-aarch64": Target("linux-aarch64", "Linux", "aarch64", "linux", tuple(_manylinux("aarch64"))),
    "linux-x86_64": Target("linux-x86_64", "Linux", "x86_64", "linux", tuple(_manylinux("x86_64"))),
}


def read_requirements(path: Path, seen: set[Path] | None = None) -> list[tuple[Path, int, Requirement]]:
    """(file, line, requirement) for every requirement line, following `-r other.txt`."""
    seen = seen or set()
    path = path.resolve()
    if path in seen:
        return []
    seen.add(path)
    out = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            out += read_requirements(path.parent / line.split(None, 1)[1], seen)
            continue
        if line.startswith("-"):
            continue  # other pip options (--no-deps, -e .): not a pin
        out.append((path, number, Requirement(line)))
    return out


def _pip_env() -> dict[str, str]:
    """This environment without the machine's own pip sources (local folders, mirrors): PyPI only, as a learner
    on a fresh laptop sees it. The certificate settings stay."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _pip_args(name: str, target: Target | None, python: str, index: str) -> list[str]:
    args = ["index", "versions", name, "--index-url", index, "--timeout", "20", "--retries", "2"]
    if target is not None:
        args += ["--python-version", python, "--only-binary=:all:", "--implementation", "cp"]
        for tag in target.tags:
            args += ["--platform", tag]
    return args


def _parse(text: str) -> tuple[list[str] | None, str]:
    """(versions, why) from the output of `pip index versions`."""
    match = re.search(r"Available versions: (.*)", text)
    if match:
        return [v.strip() for v in match.group(1).split(",")], ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1][:160] if lines else "pip printed nothing"
    if re.search(r"Retrying|ConnectionError|NewConnectionError|Max retries|timed out|Could not fetch", text):
        return None, f"unanswered: the index did not answer ({last})"
    return None, last


def _worker(target: str, python: str, index: str, names: list[str]) -> None:
    """Ask pip about each of `names` in this one process (pip's command line, called in-process: the start-up of
    a process per package would cost more than the questions), and print one JSON line per answer."""
    import contextlib
    import io
    import json

    from pip._internal.cli.main import main as pip_main

    os.environ.clear()
    os.environ.update(_pip_env())
    for name in names:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                pip_main(_pip_args(name, TARGETS.get(target), python, index))
            except SystemExit:
                pass
        versions, why = _parse(buf.getvalue())
        print(json.dumps({"name": name, "versions": versions, "why": why}), flush=True)


def ask_pip(target: Target | None, names: list[str], python: str, index: str,
            timeout: int = 600) -> dict[str, tuple[list[str] | None, str]]:
    """{name: (versions with a wheel for `target`, why not)} from one pip process; a name without an answer
    (the process died or ran out of time) gets (None, "unanswered: ...")."""
    import json

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", target.name if target else "-",
           "--python", python or "3.11", "--index-url", index, *names]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_pip_env())
        text, why = out.stdout, f"unanswered: pip exited {out.returncode} ({out.stderr.strip()[-160:]})"
    except subprocess.TimeoutExpired as err:
        text = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        why = f"unanswered: pip took more than {timeout} s"
    answers = {}
    for line in text.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            answers[row["name"]] = (row["versions"], row["why"])
    return {n: answers.get(n, (None, why)) for n in names}


def index_reachable(index: str) -> tuple[bool, str]:
    """Whether the index answers at all: pip itself must be listed there."""
    versions, why = ask_pip(None, ["pip"], "", index, timeout=120)["pip"]
    return bool(versions), why


def check(files: list[Path], targets: list[Target], python: str, index: str, jobs: int = 3) -> tuple[list, list]:
    """(problems, skipped): problems are (target, file:line, requirement, reason); `jobs` pip processes a target."""
    reqs = [r for f in files for r in read_requirements(f)]
    todo, skipped, problems = [], [], []
    for target in targets:
        env = target.environment(python)
        for path, number, req in reqs:
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}"
            if req.marker is not None and not req.marker.evaluate(env):
                skipped.append((target.name, where, str(req)))
                continue
            pins = [s.version for s in req.specifier if s.operator == "=="]
            if len(pins) != 1:
                problems.append((target.name, where, str(req), "not pinned with ==: nothing to check"))
                continue
            todo.append((target, where, req, pins[0]))
    batches = [(t, [r.name for tt, _, r, _ in todo if tt is t][k::jobs]) for t in targets for k in range(jobs)]
    answers: dict[tuple[str, str], tuple] = {}
    with concurrent.futures.ThreadPoolExecutor(len(batches) or 1) as pool:  # the processes wait on the network
        for (target, names), got in zip(batches, pool.map(lambda b: ask_pip(b[0], b[1], python, index) if b[1]
                                                          else {}, batches)):
            answers.update({(target.name, n): a for n, a in got.items()})
    for target, where, req, pin in todo:
        versions, why = answers[(target.name, req.name)]
        if versions is None and why.startswith("unanswered"):  # a busy machine or index: once more, alone
            versions, why = ask_pip(target, [req.name], python, index)[req.name]
        if versions is None and why.startswith("unanswered"):
            problems.append((target.name, where, str(req), why))
        elif versions is None:
            problems.append((target.name, where, str(req), f"no wheel for {target.name} at any version ({why})"))
        elif pin not in versions:
            near = ", ".join(versions[:6])
            problems.append((target.name, where, str(req), f"no {pin} wheel for {target.name} (has: {near} ...)"))
    return problems, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help=f"requirement files (default: {', '.join(DEFAULT_FILES)})")
    parser.add_argument("--platform", default="macos-arm64,linux-aarch64",
                        help=f"comma-separated targets: {', '.join(TARGETS)}, or all "
                             "(default: macos-arm64,linux-aarch64)")
    parser.add_argument("--python", default="3.11", help="Python version of the wheels (default 3.11)")
    parser.add_argument("--index-url", default=INDEX, help=f"the package index (default {INDEX})")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one pip process's questions
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(args.worker, args.python, args.index_url, args.files)
        return 0
    names = list(TARGETS) if args.platform == "all" else [n.strip() for n in args.platform.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"--platform {','.join(unknown)}: unknown; use {', '.join(TARGETS)} or all")
    files = [Path(f) for f in args.files] or [ROOT / f for f in DEFAULT_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        parser.error(f"no such requirement file: {', '.join(missing)}")
    ok, why = index_reachable(args.index_url)
    if not ok:
        print(f"SKIP: the package index {args.index_url} could not be reached ({why}); nothing was checked")
        return UNREACHABLE
    problems, skipped = check(files, [TARGETS[n] for n in names], args.python, args.index_url)
    for target, where, req, _ in [(*s, None) for s in skipped]:
        print(f"skip  {target:14s} {where:28s} {req}  (its marker excludes {target})")
    for target, where, req, reason in problems:
        label = "UNCHECKED" if reason.startswith("unanswered") else "FAIL"
        print(f"{label:9s} {target:14s} {where:28s} {req}: {reason}")
    checked = f"Python {args.python}, {', '.join(names)}, {', '.join(str(f.name) for f in files)}"
    failed = [p for p in problems if not p[3].startswith("unanswered")]
    if failed:
        print(f"FAILED: {len(failed)} pin(s) without wheels ({checked})")
        return 1
    if problems:
        print(f"SKIP: the index did not answer for {len(problems)} pin(s); the others have wheels ({checked})")
        return UNREACHABLE
    print(f"OK: every pin has wheels ({checked})")
    return 0

if __name__ == "__main__":
    sys.exit(main())
