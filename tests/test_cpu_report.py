"""labkit.env's CPU report: the fast paths read from /proc/cpuinfo or sysctl, the CPU family, and faking it."""

import dataclasses

import pytest

from labkit import env

XEON_AMX = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+
physical id	: 0
core id		: 0
flags		: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
processor	: 1
physical id	: 0
core id		: 0
flags		: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
processor	: 2
physical id	: 0
core id		: 1
flags		: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC_VNNI = """processor	: 0
model name	: AMD EPYC 9R14 96-Core Processor
physical id	: 0
core id		: 0
flags		: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16
"""
EPYC_AVX2 = """processor	: 0
model name	: AMD EPYC
physical id	: 0
core id		: 0
flags		: fpu sse2 avx avx2 fma
processor	: 1
model name	: AMD EPYC
physical id	: 0
core id		: 1
flags		: fpu sse2 avx avx2 fma
"""
ALDER_LAKE = "model name	: 12th Gen Intel(R) Core(TM) i7-1260P\nflags		: avx avx2 fma avx_vnni\n"
GRAVITON3 = """processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp i8mm bf16
CPU implementer	: 0x41
CPU part	: 0xd40
"""
APPLE_M2 = {"machdep.cpu.brand_string": "Apple M2", "hw.physicalcpu": "8", "hw.logicalcpu": "8",
            "hw.optional.arm.FEAT_DotProd": "1", "hw.optional.arm.FEAT_I8MM": "1"}
INTEL_MAC = {"machdep.cpu.brand_string": "Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz", "hw.physicalcpu": "8",
             "machdep.cpu.features": "FPU SSE2 AVX1.0 FMA", "machdep.cpu.leaf7_features": "AVX2 BMI2"}


def _report(fields: dict, arch: str = "x86_64") -> env.CpuReport:
    base = {"model": "?", "physical_cores": None}
    return env.CpuReport(arch=arch, threads=4, source="test", **{**base, **fields})


@pytest.mark.parametrize("text, arch, family, cores", [
    (XEON_AMX, "x86_64", "amx", 2), (EPYC_VNNI, "x86_64", "vnni", 1), (EPYC_AVX2, "x86_64", "avx2", 2),
    (ALDER_LAKE, "x86_64", "vnni", None), (GRAVITON3, "aarch64", "arm", None),
])
def test_cpuinfo_gives_the_family(text, arch, family, cores):
    fields = env.flags_from_cpuinfo(text)
    cpu = _report(fields, arch)
    assert cpu.family == family
    assert fields.get("physical_cores") == cores  # distinct (physical id, core id) pairs: hyperthreads count once
    if family == "arm":
        assert cpu.arm_dotprod and cpu.arm_i8mm and not cpu.avx2
    if family == "amx":
        assert cpu.amx and cpu.vnni and cpu.amx_bf16 and fields["model"].startswith("Intel(R) Xeon")


def test_sysctl_on_macs():
    m2 = _report(env.flags_from_sysctl(APPLE_M2), "arm64")
    assert (m2.family, m2.model, m2.physical_cores, m2.arm_dotprod, m2.arm_i8mm) == ("arm", "Apple M2", 8, True, True)
    m1 = _report(env.flags_from_sysctl({**APPLE_M2, "hw.optional.arm.FEAT_I8MM": "0"}), "arm64")
    assert m1.arm_dotprod and not m1.arm_i8mm  # an M1: dot products, no INT8 matrix multiply
    intel = _report(env.flags_from_sysctl(INTEL_MAC))
    assert intel.family == "avx2" and not intel.avx512


def test_this_machine_is_read_and_summarised():
    cpu = env.cpu_report()
    assert cpu.family in env.CPU_FAMILIES and cpu.threads >= 1
    assert cpu.source in ("/proc/cpuinfo", "sysctl", "torch")
    if cpu.torch_capability == "AVX512":  # torch's dispatcher agrees with the flags where both exist
        assert cpu.avx512
    if cpu.avx2 and cpu.source == "/proc/cpuinfo":
        assert cpu.torch_capability in ("AVX2", "AVX512")
    text = cpu.summary()
    assert cpu.family in text and str(cpu.threads) in text
    assert env.report().cpu_report == cpu


def test_a_fake_report_replaces_the_real_one_inside_the_block_only():
    real = env.cpu_report()
    with env.use_cpu_report("amx") as fake:
        assert env.cpu_report() is fake and fake.family == "amx"
        with env.use_cpu_report(env.CpuReport.of_family("arm", model="Apple M3")):
            assert env.cpu_report().model == "Apple M3"
        assert env.cpu_report() is fake
    assert env.cpu_report() == real
    with pytest.raises(ValueError, match="amx, vnni, avx2, arm"):
        env.CpuReport.of_family("sparc")


def test_every_family_has_a_typical_report():
    for family in env.CPU_FAMILIES:
        assert env.CpuReport.of_family(family).family == family


def test_result_files_record_the_cpu_and_old_files_are_described_from_their_flags():
    prov = env.provenance(command="python -m labkit.bench x --profile quick", profile="quick")
    again = env.CpuReport.from_dict(prov["cpu_report"])
    assert again == env.cpu_report() and prov["cpu_report"]["family"] == again.family
    assert again.family in env.describe_cpu_of({"provenance": prov})
    old = {"provenance": {"cpu": "AMD EPYC", "threads": 2},
           "cpu_flags": {"avx2": True, "avx512f": True, "avx512_vnni": True, "amx_int8": False}}
    assert env.describe_cpu_of(old) == "AMD EPYC, vnni (avx2, avx512, avx512_vnni), 2 threads"
    assert "CPU flags not recorded" in env.describe_cpu_of({"provenance": {"cpu": "Intel(R) Xeon(R)"}})


def test_report_is_a_plain_dataclass():
    names = {f.name for f in dataclasses.fields(env.CpuReport)}
    assert set(env.CpuReport.FLAGS) <= names and {"physical_cores", "threads", "model", "arch"} <= names
