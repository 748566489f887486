"""The fix shown when QEMU dies before its monitor answers: from how and why it died.

"fix the profile" only when the log points at the profile; never when the
profile is fine (a path handoff makes for QEMU's user, a signal from
outside, memlock, a busy device).
"""

from __future__ import annotations

import signal

from handoff.session.end import launch_failure_fix

RUN = "/run/handoff"
PROFILE_FAULT = "fix the profile"


def test_a_socket_in_the_run_directory_refused_to_qemus_user_is_not_the_profiles_fault() -> None:
    log = (
        "qemu-system-x86_64: -chardev socket,id=handoff-input,path=/run/handoff/qemu/win/"
        "input.qmp,server=on,wait=off: Failed to bind socket to "
        "/run/handoff/qemu/win/input.qmp: Permission denied"
    )
    fix = launch_failure_fix(1, log, user="nobody", run_dir=RUN)
    assert PROFILE_FAULT not in fix
    assert "/run/handoff/qemu/win/input.qmp" in fix
    assert "nobody" in fix
    assert "searchable" in fix


def test_a_proxy_node_refused_to_qemus_user_is_not_the_profiles_fault() -> None:
    log = (
        "qemu-system-x86_64: -device virtio-input-host-pci,id=handoff-keyboard,"
        "evdev=/dev/input/event5: Could not open '/dev/input/event5': Permission denied"
    )
    fix = launch_failure_fix(1, log, user="nobody", run_dir=RUN)
    assert PROFILE_FAULT not in fix
    assert "/dev/input/event5" in fix
    assert "owner or mode" in fix


def test_a_profile_file_refused_to_qemus_user_names_the_file_and_the_user() -> None:
    log = "qemu-system-x86_64: Could not open '/srv/vm/win.qcow2': Permission denied"
    fix = launch_failure_fix(1, log, user="qemu", run_dir=RUN)
    assert "'qemu' (vm.user)" in fix
    assert "/srv/vm/win.qcow2" in fix
    assert PROFILE_FAULT not in fix


def test_qemu_killed_by_a_signal_is_not_the_profiles_fault() -> None:
    fix = launch_failure_fix(-signal.SIGKILL, "", user=None, run_dir=RUN)
    assert PROFILE_FAULT not in fix
    assert "SIGKILL" in fix


def test_vfio_failing_to_pin_guest_ram_points_at_memlock() -> None:
    log = "qemu-system-x86_64: VFIO_MAP_DMA failed: Cannot allocate memory"
    fix = launch_failure_fix(1, log, user="nobody", run_dir=RUN)
    assert "memlock" in fix
    assert PROFILE_FAULT not in fix


def test_a_rejected_option_is_the_profiles_fault() -> None:
    log = "qemu-system-x86_64: -no-such-flag: invalid option"
    assert PROFILE_FAULT in launch_failure_fix(1, log, user=None, run_dir=RUN)
