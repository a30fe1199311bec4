"""Claims that hold on some CPU families only: what each depends on, where it is checked, and the check itself.

A lesson that times INT8 kernels on the learner's CPU makes claims that are true on one kind of CPU and false on
another: on an Intel Xeon with AMX the integer GEMMs run on matrix tiles and stop being the largest cost of an
INT8 graph, which they are on a CPU with VNNI only. Each such claim is one `CpuClaim` here, so a test can
enumerate them and check, for a hand-built report of every CPU family, what a lesson would assert and what it
would only print. A lesson states one with

    cpu_claims.check("int8-gemms-largest-group", measured=largest_group)

which runs `labkit.checks.expect` where the claim applies to this CPU (`labkit.env.cpu_report().family`), and
elsewhere prints the measurement, what the claim depends on, and where it was seen to hold, without failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labkit.checks import Check, expect
from labkit.env import CPU_FAMILIES, CpuReport, cpu_report


@dataclass(frozen=True)
class CpuClaim:
    """One claim a lesson checks on the learner's CPU, where it holds."""

    name: str
    lessons: tuple[str, ...]            # notebook stems that check it (lesson and solution)
    statement: str                      # what is measured, as the expect line names it
    expected: Any
    op: str | None                      # labkit.checks.expect's op (None: equality)
    depends_on: str                     # the hardware reason, in one sentence
    checked_on: tuple[str, ...]         # the CPU families (labkit.env.CPU_FAMILIES) where it is asserted
    seen: dict[str, str]                # family -> where the claim was measured (true or false) on that family

    def applies(self, cpu: CpuReport | None = None) -> bool:
        """True when the claim is asserted on `cpu` (default: this machine's report)."""
        return (cpu or cpu_report()).family in self.checked_on

    def why_not_checked(self, cpu: CpuReport | None = None) -> str:
        cpu = cpu or cpu_report()
        seen = self.seen.get(cpu.family)
        return (f"not checked on this CPU ({cpu.family}: {CPU_FAMILIES[cpu.family]}): it depends on "
                f"{self.depends_on}. Checked on: {', '.join(self.checked_on)}"
                + (f". On {cpu.family}: {seen}" if seen else f". No measurement on {cpu.family} yet"))


EXACT_INT8 = ("integer dot products that add u8 x s8 products without rounding: VNNI and AMX do; AVX2 alone "
              "adds pairs of products in 16 bits (vpmaddubsw), which saturate, so ORT's U8S8 kernels there do not "
              "compute torchao's integers exactly")

CLAIMS: dict[str, CpuClaim] = {c.name: c for c in (
    CpuClaim(
        name="ort-int8-same-labels-as-torchao",
        lessons=("01b_deploy_bert_cpu",),
        statement="ORT INT8 graph labels == torchao INT8 labels on a fixed batch",
        expected=True, op=None,
        depends_on=EXACT_INT8,
        checked_on=("amx", "vnni"),
        seen={"vnni": "true in the lab's test runs on the AMD EPYC with AVX-512 VNNI that measured the committed "
                      "latencies",
              "amx": "true in a quick run of this lesson on an Intel Xeon with AMX",
              "avx2": "false in the lab's unit test on an AMD EPYC with AVX2 only (one label of 16 differed); "
                      "ORT's MatMulInteger there differs from the exact integer product"},
    ),
    CpuClaim(
        name="ort-int8-gemm-exact",
        lessons=(),
        statement="one quantized Linear of the ORT graph == torchao's INT8 Linear, to float rounding",
        expected=True, op=None,
        depends_on=EXACT_INT8,
        checked_on=("amx", "vnni"),
        seen={"vnni": "true in the lab's test runs on the AMD EPYC with AVX-512 VNNI that measured the committed "
                      "latencies",
              "amx": "true in the lab's test run on an Intel Xeon with AMX",
              "avx2": "false in the lab's unit test on an AMD EPYC with AVX2 only: outputs off by as much as the "
                      "outputs themselves"},
    ),
    CpuClaim(
        name="ort-int8-accuracy-as-torchao",
        lessons=("01b_deploy_bert_cpu",),
        statement="eval sentences labelled differently by ORT INT8 and torchao INT8 <= max(2, 2% of them)",
        expected=True, op=None,
        depends_on=EXACT_INT8,
        checked_on=("amx", "vnni"),
        seen={"vnni": "true in the lab's test runs on the AMD EPYC with AVX-512 VNNI that measured the committed "
                      "latencies",
              "amx": "true in a quick run of this lesson on an Intel Xeon with AMX, and in the committed full "
                     "run's accuracy stage (on an Intel Xeon whose flags it did not record)",
              "avx2": "true in a quick run of this lesson on an AMD EPYC with AVX2 only, by margin rather than "
                      "by exactness: not asserted there"},
    ),
    CpuClaim(
        name="ort-int8-beats-fp32-eager",
        lessons=("01b_deploy_bert_cpu",),
        statement="ORT INT8 (QAT grid) time / PyTorch FP32 eager time, batch 8 x 128, 1 thread",
        expected=1.0, op="<",
        depends_on="integer multiply-add instructions for ORT's INT8 GEMMs (x86: AVX2's 16-bit multiply-adds, "
                   "VNNI or AMX); on ARM, ORT's dot-product kernels against PyTorch's FP32 ones were not measured",
        checked_on=("amx", "vnni", "avx2"),
        seen={"vnni": "true in the committed full run (deploy_bert_cpu.json: AMD EPYC, AVX-512 VNNI)",
              "amx": "true in a quick run of this lesson on an Intel Xeon with AMX",
              "avx2": "true in quick runs of this lesson on an AMD EPYC with AVX2 only"},
    ),
    CpuClaim(
        name="int8-gemms-largest-group",
        lessons=("01b_deploy_bert_cpu",),
        statement="largest operator group of the lab's INT8 graph (ORT profiler, batch 8 x 128, 1 thread)",
        expected="integer GEMMs", op=None,
        depends_on="how fast the integer GEMMs are against the float work around them (attention, LayerNorm, "
                   "GELU): with VNNI or AVX2 they take most of the time; with AMX they run on matrix tiles and "
                   "the float work is larger",
        checked_on=("vnni", "avx2"),
        seen={"vnni": "true in the committed full run (deploy_bert_cpu.json: AMD EPYC, AVX-512 VNNI)",
              "avx2": "true in quick runs of this lesson on an AMD EPYC with AVX2 only",
              "amx": "false in a run of this lesson on an Intel Xeon with AMX: the float work was larger"},
    ),
)}


def check(name: str, measured: Any, cpu: CpuReport | None = None) -> Check | None:
    """Check claim `name` on `measured` where it applies to `cpu` (default: this machine), with
    `labkit.checks.expect` (raises ClaimFailed when false); elsewhere print the measurement and why it is not
    checked, and return None."""
    if name not in CLAIMS:
        raise KeyError(f"unknown CPU claim {name!r}; labkit.cpu_claims.CLAIMS has: {', '.join(CLAIMS)}")
    claim = CLAIMS[name]
    cpu = cpu or cpu_report()
    if claim.applies(cpu):
        return expect(f"{claim.statement} [on {cpu.family}]", measured, claim.expected, op=claim.op)
    expected = f"{claim.op} {claim.expected}" if claim.op else repr(claim.expected)
    shown = f"{measured:.3g}" if isinstance(measured, float) else repr(measured)
    print(f"INFO  {claim.statement}: measured {shown} (the claim is {expected}); {claim.why_not_checked(cpu)}.")
    return None


def plan(cpu: CpuReport | None = None) -> list[dict]:
    """Every CPU claim and whether it is checked on `cpu` (default: this machine): for the setup check."""
    cpu = cpu or cpu_report()
    return [{"lesson": ", ".join(c.lessons), "claim": c.statement,
             "here": "checked" if c.applies(cpu) else "shown, not checked", "depends on": c.depends_on}
            for c in CLAIMS.values()]


def ort_speed_ratio(rows: list[dict], batch: int = 8, threads: int = 1, variant: str = "ort-qat-int8") -> float:
    """p50 of `variant` / p50 of PyTorch FP32 eager at `batch` (and `threads`, where rows record it), from the
    rows of `labkit.experiments.deploy_bert.latency_table` or a committed file's `latency` list."""
    def p50(v: str) -> float:
        hits = [r["p50_ms"] for r in rows if r["variant"] == v and r["batch"] == batch
                and r.get("threads", threads) == threads]
        if not hits:
            raise KeyError(f"no latency row for {v!r} at batch {batch}, {threads} thread(s)")
        return hits[0]

    return p50(variant) / p50("torch-fp32")


def largest_group(groups: dict[str, float]) -> str:
    """The operator group with the most time in a `profile_ort` entry's `groups`."""
    return max(groups, key=groups.get)


__all__ = ["CLAIMS", "CpuClaim", "check", "largest_group", "ort_speed_ratio", "plan"]
