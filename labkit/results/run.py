"""A benchmark run's files, and the rules that keep committed references safe.

    runs/<experiment>_<device>_<UTC time>/result.json     the summary: provenance, config, rows, status
    runs/<experiment>_<device>_<UTC time>/result.jsonl    every finished measurement, appended as it happens:
                                                          {"record": what it is, **the row, "attempt": k}

A run never writes into the committed reference folder (data/reference/): `--update-reference` copies a
complete full-profile run there at the end, and nothing else does. The summary's `status` is `running` until
the end, then `complete`, `failed` (with the reason) or `interrupted` (Ctrl-C, SIGTERM); `--resume` continues an
interrupted or failed run from its JSONL, skipping what it already measured. `python -m labkit.bench` drives it.
"""

from __future__ import annotations

import datetime
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from labkit.measure.memory import error_text
from labkit.results.files import REFERENCE_DIR, append_jsonl, read_jsonl, write_json
from labkit.results.reference import is_reference, reference_dir

RUNS_DIR = Path("runs")
EXIT_CODES = {"complete": 0, "failed": 1, "interrupted": 130}


class RunSetupError(ValueError):
    """The run's output cannot be set up as asked; the message names the argument, the value and the fix."""


def _utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def is_reference_folder(folder: Path) -> bool:
    folder = Path(folder).resolve()
    return any(folder == d.resolve() for d in (reference_dir(), Path.cwd() / REFERENCE_DIR))


def run_paths(experiment: str, device_slug: str, out: str | Path | None = None, *,
              resume: bool = False) -> tuple[Path, Path]:
    """(result JSON, measurements JSONL) of a run, checked before any work starts.

    out None: a new run folder runs/<experiment>_<device>_<UTC time>/. out a file (a name with a suffix, such as
    .json): that file (its JSONL beside it); out a folder (an existing one, or a name without a suffix, such as
    runs/fast8bit_h100): result.json inside it. Refused: a path in the committed reference folder; an existing run
    without --resume; --resume without a JSONL to resume from."""
    if out is None:
        if resume:
            raise RunSetupError("--resume needs --out: give the result file of the run to continue "
                                f"(e.g. --out runs/{experiment}_{device_slug}_<time>/result.json)")
        folder = RUNS_DIR / f"{experiment}_{device_slug}_{_utc_stamp()}"
        for i in range(2, 100):  # two runs started within the same second get folders of their own
            if not folder.exists():
                break
            folder = folder.with_name(f"{folder.name.split('-')[0]}-{i}")
        json_path = folder / "result.json"
    else:
        json_path = Path(out)
        if json_path.is_dir() or str(out).endswith(("/", "\\")) or not json_path.suffix:
            json_path = json_path / "result.json"
    if is_reference_folder(json_path.parent):
        raise RunSetupError(
            f"--out {out}: that is the committed reference folder, and benchmarks never write over a reference. "
            "Leave --out out (the run gets its own folder under runs/), and add --update-reference to copy a "
            "complete full-profile run to the reference at the end.")
    jsonl_path = json_path.with_suffix(".jsonl")
    if resume and not jsonl_path.is_file():
        raise RunSetupError(f"--resume: {jsonl_path} does not exist, so there is nothing to resume; "
                            "leave --resume out to start a new run")
    if not resume and (json_path.exists() or jsonl_path.exists()):
        raise RunSetupError(f"--out {out}: {json_path} already holds a run; add --resume to continue it, "
                            "or choose another --out (or leave it out for a new run folder)")
    return json_path, jsonl_path


def _earlier_attempts(json_path: Path) -> list[dict]:
    """The attempts an earlier run of this result file recorded, each with the provenance it ran under; a run
    killed before it could write its attempts counts as one attempt that measured."""
    try:
        old = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if old.get("attempts"):
        return [dict(a) for a in old["attempts"]]
    prov = old.get("provenance")
    return [{"provenance": prov, "measurements": None}] if isinstance(prov, dict) else []


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _line(kind: str, row: dict) -> str:
    """One console line for a finished measurement: its scalar fields, numbers to 4 significant digits."""
    def show(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)[:60]
    fields = [f"{k}={show(v)}" for k, v in row.items() if isinstance(v, (str, int, float, bool)) and v is not None
              and k not in ("attempt", "traceback")]
    return f"  {kind}: " + " ".join(fields)[:200]


class Run:
    """One benchmark run: `record` appends a finished measurement to the JSONL and rewrites the summary;
    `fail` notes a reason the run did not do what was asked; leaving the `with` block writes the final status.

    Inside `with Run(...) as run:`, Ctrl-C (or SIGTERM, a time limit) ends the run as `interrupted` and any other
    exception as `failed` (both recorded in the file, neither re-raised), so the caller reads the outcome from
    `run.status`. `summarize(result)` fills the summary's judged parts (targets) when the run ends, whatever ends
    it. Without paths (a process of a multi-process job that is not rank 0) nothing is written."""

    def __init__(self, result: dict, json_path: Path | None, jsonl_path: Path | None, *, resume: bool = False,
                 summarize: Callable[[dict], None] | None = None, quiet: bool = False):
        self.json_path = Path(json_path) if json_path else None
        self.jsonl_path = Path(jsonl_path) if jsonl_path else None
        self.previous = read_jsonl(self.jsonl_path) if resume and self.jsonl_path else []
        self.failures: list[str] = []
        self.result, self.summarize, self.quiet = result, summarize, quiet or self.json_path is None
        result.update(status="running", reason=None,
                      files={"result": str(self.json_path), "measurements": str(self.jsonl_path)})
        if resume:
            result["resumed"] = {"measurements_reused": len(self.previous)}
        # every attempt of the run (first run, each --resume) with what it measured; the summary's provenance
        # must describe the machine that made the numbers, not one that only resumed and published them
        self.measured = 0
        self.earlier_attempts = _earlier_attempts(self.json_path) if resume and self.json_path else []
        self.attempt = len(self.earlier_attempts) + 1

    # -- measurements -------------------------------------------------------------------------------------------

    def recorded(self, kind: str) -> list[dict]:
        """The measurements of `kind` an earlier attempt of this run left in its JSONL (empty unless --resume)."""
        return [{k: v for k, v in r.items() if k != "record"} for r in self.previous if r.get("record") == kind]

    def record(self, kind: str, row: dict, quiet: bool = False) -> dict:
        """Append one finished measurement to the JSONL as {"record": kind, **row, "attempt": the attempt that made
        it}, flushed to disk; rewrite the summary; return the row as stored (without "record")."""
        row = {**row, "attempt": row.get("attempt", self.attempt)}
        if self.jsonl_path is not None:
            append_jsonl(self.jsonl_path, {"record": kind, **row})
        self.measured += 1
        self.save()
        if not (quiet or self.quiet):
            print(_line(kind, row), flush=True)
        return row

    def once(self, kind: str, measure: Callable[[], dict], **key) -> dict:
        """The `kind` row with `key` an earlier attempt recorded; else `measure()` (with `key`), recorded now."""
        for row in self.recorded(kind):
            if all(row.get(k) == v for k, v in key.items()):
                return row
        return self.record(kind, {**key, **measure()})

    def save(self) -> None:
        if self.json_path is not None:
            write_json(self.json_path, self.result)

    def fail(self, reason: str) -> None:
        """The run goes on, but will end `failed` with this reason."""
        self.failures.append(reason)
        if not self.quiet:
            print(f"FAILED: {reason}", flush=True)

    # -- the outcome --------------------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self.result["status"]

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)

    def finish(self, status: str | None = None, reason: str | None = None) -> None:
        if self.summarize is not None:
            try:
                self.summarize(self.result)
            except Exception as err:  # noqa: BLE001 - a run whose targets cannot be judged did not do what was asked
                self.failures.append(f"judging the targets: {error_text(err)}")
        status = status or ("failed" if self.failures else "complete")
        self.result["status"] = status
        self.result["reason"] = reason or ("; ".join(self.failures) if self.failures else None)
        self._note_attempt()
        self.save()

    def _note_attempt(self) -> None:
        """Record this attempt in `attempts`; an attempt that measured nothing (a resume that only finished or
        published the run) keeps the provenance of the last attempt that did measure."""
        here = self.result.get("provenance")
        if not isinstance(here, dict):
            return
        if self.measured == 0:
            measuring = [a for a in self.earlier_attempts if a.get("measurements") != 0 and a.get("provenance")]
            if measuring:
                here = {**here, "note": "measured nothing: every measurement was made by an earlier attempt"}
                self.result["provenance"] = {**measuring[-1]["provenance"], "finished_by": {
                    k: here.get(k) for k in ("date", "command", "device_name", "cpu", "threads")}}
        self.result["attempts"] = [*self.earlier_attempts, {"provenance": here, "measurements": self.measured}]

    def __enter__(self) -> Run:
        self.save()
        # a time limit ends a job with SIGTERM: end the run as `interrupted` (the status and the --resume hint
        # written), as Ctrl-C does, instead of leaving it `running`
        self._sigterm = None
        if threading.current_thread() is threading.main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
        if exc_type is None:
            self.finish()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("interrupted", "interrupted (Ctrl-C, or SIGTERM from a time limit); continue it with the "
                                       f"same command plus --resume --out {self.json_path}")
        elif issubclass(exc_type, Exception):
            traceback.print_exception(exc_type, exc, tb, limit=6, file=sys.stderr)
            self.finish("failed", error_text(exc))
        else:
            return False
        if self.json_path is not None:
            print(f"{self.status}: {self.json_path}" + (f" ({self.result['reason']})" if self.result["reason"]
                                                        else ""), flush=True)
        return True


def publish(run: Run, reference: Path) -> Path | None:
    """Copy a complete full-profile run's summary to the committed reference file `reference` (--update-reference);
    any other run leaves the reference as it was (None)."""
    ok, why = is_reference(run.result)
    if run.status != "complete" or not ok:
        print(f"--update-reference: {reference} left as it was: the run is {run.status}"
              + ("" if ok else f" and its {why}"), flush=True)
        return None
    write_json(reference, {k: v for k, v in run.result.items() if k not in ("files", "resumed")})
    print(f"updated the reference {reference}", flush=True)
    return reference
