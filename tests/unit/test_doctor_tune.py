"""`handoff doctor PROFILE`'s tuning checks on fake sysfs trees of real topologies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from handoff.checks import DoctorEnv, Verdict
from handoff.checks.tune import check_tuning
from handoff.profile import parse_profile
from tests.unit.fakecpu import X86_FLAGS, Machine, ryzen_8c16t_2ccx, write_sysfs

BASE = """
[vm]
name = "d"
memory = "8G"
cpus = 8
sockets = 1
cores = 4
threads = 2
"""


def env_for(tmp_path: Path, m: Machine, *, available_mib: int = 16384,
            init: str = "systemd", cgroup2: bool = True) -> DoctorEnv:  # fmt: skip
    paths = write_sysfs(m, tmp_path)
    (paths.proc / "meminfo").write_text(
        f"MemTotal:       32000000 kB\nMemAvailable:   {available_mib * 1024} kB\n"
    )
    (paths.proc / "1").mkdir(parents=True)
    (paths.proc / "1/comm").write_text(init + "\n")
    if cgroup2:
        (paths.sys / "fs/cgroup").mkdir(parents=True)
        (paths.sys / "fs/cgroup/cgroup.controllers").write_text("cpuset cpu io memory\n")
    return DoctorEnv(host=paths)


def checks(env: DoctorEnv, extra: str, base: str = BASE) -> dict[str, tuple[Verdict, str]]:
    profile = parse_profile(base + extra, Path("/etc/handoff/d.toml"))
    return {c.name: (c.verdict, c.detail) for c in check_tuning(env, profile)}


def test_an_untuned_profile_gets_no_tuning_check(tmp_path: Path) -> None:
    assert checks(env_for(tmp_path, ryzen_8c16t_2ccx()), "") == {}


def test_the_pinning_doctor_shows_is_the_worked_example(tmp_path: Path) -> None:
    out = checks(env_for(tmp_path, ryzen_8c16t_2ccx()), '[cpu]\npin = "auto"\n')
    verdict, detail = out["cpu-pinning"]
    assert verdict is Verdict.OK
    assert detail.startswith("16 online CPUs, guest 8 vCPUs (sockets=1, cores=4, threads=2): ")
    assert "vCPU 0 -> CPU 4; vCPU 1 -> CPU 12" in detail
    assert "emulator -> CPUs 0-3,8-11" in detail


def test_too_few_cpus_fail_naming_the_numbers(tmp_path: Path) -> None:
    big = BASE.replace("cpus = 8", "cpus = 16").replace("cores = 4", "cores = 8")
    verdict, detail = checks(env_for(tmp_path, ryzen_8c16t_2ccx()), '[cpu]\npin = "auto"\n',
                             big)["cpu-pinning"]  # fmt: skip
    assert verdict is Verdict.FAIL
    assert "8 physical cores" in detail


def test_1g_pages_need_pdpe1gb(tmp_path: Path) -> None:
    m = ryzen_8c16t_2ccx()
    no_1g = Machine(m.name, replace(m.tuning, cpu_flags=X86_FLAGS - {"pdpe1gb"}))
    verdict, detail = checks(env_for(tmp_path, no_1g), '[memory]\nhugepages = "1G"\n')[
        "hugepages"
    ]
    assert verdict is Verdict.FAIL
    assert "no pdpe1gb" in detail
    assert "pool sizes offered: 2M, 1G" in detail


def test_the_pool_must_fit_in_available_memory(tmp_path: Path) -> None:
    env = env_for(tmp_path, ryzen_8c16t_2ccx(), available_mib=4096)
    verdict, detail = checks(env, '[memory]\nhugepages = "2M"\n')["hugepages"]
    assert verdict is Verdict.FAIL
    assert "needs 8192 MiB more but only 4096 MiB is available" in detail


def test_2m_pages_that_fit_are_ok_and_1g_warns_to_reserve_at_boot(tmp_path: Path) -> None:
    env = env_for(tmp_path, ryzen_8c16t_2ccx())
    assert checks(env, '[memory]\nhugepages = "2M"\n')["hugepages"][0] is Verdict.OK
    assert checks(env, '[memory]\nhugepages = "1G"\n')["hugepages"][0] is Verdict.WARN


def test_a_governor_the_cpus_do_not_offer_fails(tmp_path: Path) -> None:
    env = env_for(tmp_path, ryzen_8c16t_2ccx())
    out = checks(env, '[cpu]\npin = "auto"\ngovernor = "turbo"\n')
    assert out["cpu-governor"][0] is Verdict.FAIL
    assert "offers only conservative" in out["cpu-governor"][1]
    ok = checks(env, '[cpu]\npin = "auto"\ngovernor = "performance"\n')["cpu-governor"]
    assert ok[0] is Verdict.OK


def test_isolation_needs_systemd_on_cgroup_v2(tmp_path: Path) -> None:
    profile = '[cpu]\npin = "auto"\nisolate = true\n'
    no_systemd = checks(env_for(tmp_path / "a", ryzen_8c16t_2ccx(), init="runit"), profile)
    assert no_systemd["cpu-isolation"][0] is Verdict.FAIL
    assert "PID 1 here is 'runit'" in no_systemd["cpu-isolation"][1]
    v1 = checks(env_for(tmp_path / "b", ryzen_8c16t_2ccx(), cgroup2=False), profile)
    assert "not cgroup v2" in v1["cpu-isolation"][1]
    ready = checks(env_for(tmp_path / "c", ryzen_8c16t_2ccx()), profile)
    assert ready["cpu-isolation"][0] is Verdict.OK
    assert "systemd-run --scope" in ready["cpu-isolation"][1]
