"""[[usb]]: the entries, QEMU's usb-host per entry, the refusals, the nodes handed over and back."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from handoff.base.host import HostPaths
from handoff.desk import usb as core
from handoff.desk.journal import DeskJournal, list_desk_journals
from handoff.desk.recovery import recover_desk
from handoff.desk.usb_host import UsbPassthrough
from handoff.profile import Accelerator, Profile, Usb, parse_profile
from handoff.session.plan import HostFacts, plan_session

SOURCE = Path("/etc/handoff/usb.toml")


def profile(entries: str, extra: str = "") -> Profile:
    return parse_profile(f'[vm]\nname = "usbvm"\nmemory = "1G"\n{extra}{entries}', SOURCE)


def test_each_entry_is_one_usb_host_on_one_xhci_by_id_or_by_port() -> None:
    p = profile('[[usb]]\ndevice = "046D:C52B"\n[[usb]]\nport = "3-1.4"\n')
    assert p.usb == (Usb(device="046d:c52b"), Usb(port="3-1.4"))
    argv = list(plan_session(p, HostFacts(Accelerator.TCG, "", 0), HostPaths()).argv)
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices == [
        "qemu-xhci,id=xhci",
        "usb-host,bus=xhci.0,id=usb-host-0,vendorid=0x046d,productid=0xc52b",
        "usb-host,bus=xhci.0,id=usb-host-1,hostbus=3,hostport=1.4",
    ]


def test_the_tablet_and_the_usb_devices_share_the_controller() -> None:
    p = profile('[[usb]]\ndevice = "1234:abcd"\n', '[display]\ntablet = true\n')
    argv = list(plan_session(p, HostFacts(Accelerator.TCG, "", 0), HostPaths()).argv)
    assert argv.count("qemu-xhci,id=xhci") == 1
    assert argv.index("usb-tablet,bus=xhci.0") < argv.index(
        "usb-host,bus=xhci.0,id=usb-host-0,vendorid=0x1234,productid=0xabcd")


KBD = core.HostUsb("1-1", 1, 2, "046d", "c31c", "USB Keyboard", keyboards=("/dev/input/event3",))
DONGLE = core.HostUsb("1-2", 1, 3, "046d", "c52b", "Unifying Receiver",
                      keyboards=("/dev/input/event5",), grabbed=("/dev/input/event5",))
PAD = core.HostUsb("2-1", 2, 4, "045e", "028e", "Controller")


def test_a_game_controller_passes() -> None:
    assert core.refusal([Usb(device="045e:028e")], [KBD, DONGLE, PAD], host_keyboards=2) is None


def test_a_device_the_input_hand_off_also_takes_is_refused_naming_both() -> None:
    problem = core.refusal([Usb(device="046d:c52b")], [KBD, DONGLE, PAD], host_keyboards=2)
    assert problem is not None
    message, fix = problem
    assert message == ("usb device 046d:c52b (1-2, Unifying Receiver) is also taken by the input "
                       "hand-off (/dev/input/event5): one device, two owners")
    assert 'input.exclude (e.g. "usb:046d:c52b")' in fix


def test_the_hosts_only_keyboard_is_refused_by_port_too() -> None:
    problem = core.refusal([Usb(port="1-1")], [KBD, PAD], host_keyboards=1)
    assert problem is not None
    assert problem[0].startswith("usb port 1-1 (1-1) is the host's only keyboard")
    assert core.refusal([Usb(port="1-1")], [KBD, PAD], host_keyboards=2) is None


def test_a_device_not_plugged_in_is_not_refused_it_attaches_later() -> None:
    assert core.refusal([Usb(device="dead:beef")], [KBD], host_keyboards=1) is None


# --------------------------------------------------------------------------- nodes


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    return HostPaths(dev=tmp_path / "dev", run=tmp_path / "run")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_node_goes_to_vm_user_journaled_and_comes_back(paths: HostPaths) -> None:
    node = paths.dev / "bus" / "usb" / "001" / "003"
    node.parent.mkdir(parents=True)
    node.write_bytes(b"")
    node.chmod(0o664)
    passed = parse_profile(
        '[vm]\nname = "usbvm"\nmemory = "1G"\nuser = "nobody"\n[[usb]]\ndevice = "046d:c52b"\n',
        SOURCE)
    resource = UsbPassthrough(passed, paths, report=lambda _: None)
    resource._owner = (65534, 65534)
    resource._hold.journal = DeskJournal.begin(paths, "usbvm", "usb")
    resource._hand_over(node)
    st = os.stat(node)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o660)
    (path,) = list_desk_journals(paths)
    assert path.name == "usbvm+usb.json"
    assert [n.path for n in DeskJournal.load(path).nodes] == [str(node)]
    lines: list[str] = []
    assert recover_desk(paths, lines.append)  # no session lock held, no QEMU recorded
    st = os.stat(node)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o664)
    assert lines == [f"returned: gave back {node} of usbvm"]
    assert not list_desk_journals(paths)
    trio.run(resource.release)  # after recover: nothing left to give, no error
