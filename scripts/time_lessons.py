"""Record how long each lesson takes in the quick profile here, for notebook 00's time estimates.

    python scripts/time_lessons.py                       # every lesson, into runs/lesson_times_<UTC time>.json
    python scripts/time_lessons.py --update-reference    # and copy the run to data/reference/
    python scripts/time_lessons.py 00_setup_check 01b_deploy_bert_cpu --out runs/some.json
    python scripts/time_lessons.py --resume --out runs/lesson_times_<time>.json   # time only what is missing

Each lesson is executed as `make run` executes it (nbconvert, a fresh kernel, LABKIT_PROFILE=quick) and timed
wall to wall. Before and after it, `labkit.env.cpu_speed_probe()` times a fixed matmul; the lesson's record keeps
both, so a machine that was slowed by other jobs during a lesson records a slower probe too, and notebook 00
scales each lesson by (probe here / probe while it ran). The file is written after every lesson; exit 0 only when
every lesson ran. An interrupted run (a time limit, Ctrl-C) keeps the lessons it finished; `--resume --out FILE`
times the rest into the same file (each lesson records the probe of its own moment, so they may come from
different sessions).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labkit import env  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="notebook stems (default: every lesson in notebooks/)")
    parser.add_argument("--out", default=None, help="result file (default runs/lesson_times_<UTC time>.json)")
    parser.add_argument("--update-reference", action="store_true",
                        help=f"copy the run to data/reference/{env.LESSON_TIMES} when no lesson failed (one "
                             "cut short is marked partial; notebook 00 says which lessons it lacks)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per lesson (default 1800)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out: time only missing lessons")
    args = parser.parse_args(argv)
    known = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))
    lessons = args.lessons or known
    unknown = [s for s in lessons if s not in known]
    if unknown:
        parser.error(f"unknown lesson(s) {', '.join(unknown)}; lessons: {', '.join(known)}")
    if args.update_reference and args.lessons and not args.resume:
        parser.error("--update-reference needs every lesson: leave the lesson list out (or --resume a run)")
    if args.resume and not (args.out and Path(args.out).is_file()):
        parser.error("--resume needs --out FILE, a run this script wrote")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or ROOT / "runs" / f"lesson_times_{stamp}.json")
    if out.resolve().parent == (ROOT / "data" / "reference").resolve():
        parser.error("--out may not be in data/reference/: use --update-reference")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file() and not args.resume:
        parser.error(f"{out} already holds a run: add --resume to finish it, or name another --out")
    command = "python scripts/time_lessons.py " + " ".join(argv if argv is not None else sys.argv[1:])
    prov = env.provenance(command.strip(), profile="quick")
    prov["load_average_at_start"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    record = json.loads(out.read_text(encoding="utf-8")) if args.resume else None
    if record is not None:
        record.setdefault("resumed_by", []).append(prov)
        record["status"] = "running"
        record.pop("failed", None)
        record.pop("reason", None)
        lessons = [s for s in lessons if s not in record["lessons"]]
    record = record or {"experiment": "lesson_times", "provenance": prov, "status": "running",
              "notes": ["seconds: wall time of `jupyter nbconvert --execute` of the lesson (kernel start included), "
                        "LABKIT_PROFILE=quick", "probe_ms: labkit.env.cpu_speed_probe() before and after the "
                        "lesson, averaged: notebook 00 scales seconds by its own probe / probe_ms"],
              "lessons": {}}
    child = dict(os.environ, LABKIT_PROFILE="quick", PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for stem in lessons:
            before = env.cpu_speed_probe()
            t0 = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                                  f"--ExecutePreprocessor.timeout={args.timeout}", "--output-dir", tmp,
                                  str(ROOT / "notebooks" / f"{stem}.ipynb")], env=child, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            after = env.cpu_speed_probe()
            ok = run.returncode == 0
            entry = {"seconds": round(seconds, 1), "probe_ms": round((before + after) / 2, 2),
                     "probe_ms_before_after": [round(before, 2), round(after, 2)]}
            if ok:
                record["lessons"][stem] = entry
            else:
                failed.append(stem)
                entry["error"] = run.stderr.strip().splitlines()[-1][:300] if run.stderr.strip() else ""
                record.setdefault("failed", {})[stem] = entry
            print(f"{stem}: {seconds:.0f} s, probe {before:.0f}/{after:.0f} ms{'' if ok else ' FAILED'}", flush=True)
            out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    missing = [s for s in known if s not in record["lessons"] and s not in failed]
    record["status"] = "failed" if failed else ("partial" if missing else "complete")
    if missing and not failed:
        record["reason"] = f"not timed: {', '.join(missing)}"
    if failed:
        record["reason"] = f"{len(failed)} lesson(s) failed: {', '.join(failed)}"
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    if args.update_reference and not failed:  # a partial run (status "partial") says which lessons it lacks
        target = ROOT / "data" / "reference" / env.LESSON_TIMES
        shutil.copyfile(out, target)
        print(f"updated {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
