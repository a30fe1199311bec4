"""Claims that hold on some CPU families only (labkit.cpu_claims), checked against a faked report of each family.

For every family the lab meets (Intel Xeon with AMX; x86 with VNNI and no AMX; x86 with AVX2 only; ARM) the table
below says which claims a lesson asserts there. The tests check that the gate follows it, that an asserted claim
can fail, that a claim not asserted never fails a lesson (it prints why), that the committed reference satisfies
every claim asserted on its own CPU's family, and that the lessons state their hardware claims through these
functions and no other way."""

import json
import re
from pathlib import Path

import pytest

from labkit import cpu_claims, env
from labkit.checks import ClaimFailed

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_REFERENCE = ROOT / "data" / "reference" / "deploy_bert_cpu.json"

# claim -> family -> asserted there?
GATES = {
    "ort-int8-gemm-exact": {"amx": True, "vnni": True, "avx2": False, "arm": False},
    "ort-int8-same-labels-as-torchao": {"amx": True, "vnni": True, "avx2": False, "arm": False},
    "ort-int8-accuracy-as-torchao": {"amx": True, "vnni": True, "avx2": False, "arm": False},
    "ort-int8-beats-fp32-eager": {"amx": True, "vnni": True, "avx2": True, "arm": False},
    "int8-gemms-largest-group": {"amx": False, "vnni": True, "avx2": True, "arm": False},
}
# a measured value that makes each claim true, and one that makes it false
TRUE_FALSE = {
    "ort-int8-gemm-exact": (True, False),
    "ort-int8-same-labels-as-torchao": (True, False),
    "ort-int8-accuracy-as-torchao": (True, False),
    "ort-int8-beats-fp32-eager": (0.6, 1.3),
    "int8-gemms-largest-group": ("integer GEMMs", "attention (float)"),
}
FAMILIES = ("amx", "vnni", "avx2", "arm")


def test_the_table_covers_every_claim_and_family():
    assert set(GATES) == set(cpu_claims.CLAIMS) == set(TRUE_FALSE)
    assert all(set(g) == set(FAMILIES) for g in GATES.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_each_claim_is_asserted_exactly_where_the_table_says(family, capsys):
    with env.use_cpu_report(family):
        for name, claim in cpu_claims.CLAIMS.items():
            good, bad = TRUE_FALSE[name]
            assert claim.applies() is GATES[name][family], (name, family)
            if GATES[name][family]:
                assert cpu_claims.check(name, good).passed
                with pytest.raises(ClaimFailed):
                    cpu_claims.check(name, bad)  # the check can fail where it is made
            else:
                assert cpu_claims.check(name, bad) is None  # shown, never failing the lesson
                out = capsys.readouterr().out
                assert f"not checked on this CPU ({family}" in out and claim.depends_on in out


@pytest.mark.parametrize("family", FAMILIES)
def test_the_setup_check_plan_matches_the_gates(family):
    plan = cpu_claims.plan(env.CpuReport.of_family(family))
    by_claim = {row["claim"]: row["here"] for row in plan}
    for name, claim in cpu_claims.CLAIMS.items():
        assert by_claim[claim.statement] == ("checked" if GATES[name][family] else "shown, not checked")


def test_claims_are_asserted_only_where_they_were_seen_to_hold():
    for claim in cpu_claims.CLAIMS.values():
        for family in claim.checked_on:
            assert claim.seen.get(family, "").startswith("true"), (claim.name, family)
        for family, seen in claim.seen.items():
            if seen.startswith("false"):
                assert family not in claim.checked_on, (claim.name, family)


def test_the_committed_run_satisfies_every_claim_asserted_on_its_cpu():
    ref = json.loads(DEPLOY_REFERENCE.read_text())
    prov = ref["latency_info"]["provenance"]
    cpu = env.cpu_from_flags(prov["cpu_flags"], model=prov["cpu"])
    assert cpu.family == "vnni"  # an AMD EPYC with AVX-512 VNNI
    measured = {
        "ort-int8-beats-fp32-eager": cpu_claims.ort_speed_ratio(ref["latency"], batch=8, threads=1),
        "int8-gemms-largest-group": cpu_claims.largest_group(ref["profile_ort"]["ort-qat-int8-exact"]["groups"]),
    }
    assert set(measured) == {n for n, c in cpu_claims.CLAIMS.items() if c.applies(cpu)
                             and c.seen[cpu.family].startswith("true in the committed")}
    for name, value in measured.items():
        assert GATES[name][cpu.family]
        assert cpu_claims.check(name, value, cpu=cpu).passed


def test_speed_ratio_reads_live_rows_and_committed_rows():
    live = [{"variant": "torch-fp32", "batch": 8, "p50_ms": 500.0}, {"variant": "ort-qat-int8", "batch": 8,
                                                                    "p50_ms": 350.0}]
    assert cpu_claims.ort_speed_ratio(live) == pytest.approx(0.7)
    committed = [dict(r, threads=2, p50_ms=r["p50_ms"] / 2) for r in live] + [dict(r, threads=1) for r in live]
    assert cpu_claims.ort_speed_ratio(committed, threads=1) == pytest.approx(0.7)
    with pytest.raises(KeyError, match="batch 1"):
        cpu_claims.ort_speed_ratio(live, batch=1)
    with pytest.raises(KeyError, match="unknown CPU claim"):
        cpu_claims.check("int8-is-always-faster", 1.0)


def _code(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def test_lessons_state_their_cpu_claims_through_labkit():
    notebooks = sorted((ROOT / "notebooks").glob("**/*.ipynb"))
    called: dict[str, set[str]] = {}
    for path in notebooks:
        for name in re.findall(r"cpu_claims\.check\(\s*\"([^\"]+)\"", _code(path)):
            called.setdefault(name, set()).add(path.stem)
    assert set(called) <= set(cpu_claims.CLAIMS), f"unknown claims in notebooks: {set(called) - set(cpu_claims.CLAIMS)}"
    for name, claim in cpu_claims.CLAIMS.items():
        assert set(claim.lessons) <= called.get(name, set()), f"{name} is not checked in {claim.lessons}"
    # no live timing of this run is asserted outside the gate (committed files may be: they do not change)
    code = _code(ROOT / "notebooks" / "01b_deploy_bert_cpu.ipynb")
    assert not re.search(r"assert .*(b8\[|lab_groups, key)", code)
