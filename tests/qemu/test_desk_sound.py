"""[sound] user against a real PulseAudio (Debian's pulseaudio) run by an ordinary user.

The fixture makes a user of its own (removed after), gives it /run/user/UID
as logind would, and starts ``pulseaudio`` as that user with a null sink and
the native protocol on /run/user/UID/pulse/native (cookie auth, PulseAudio's
default). ``handoff run`` as root then plays there: QEMU is one of that
server's clients (``pactl list clients`` run as the user). With the server
stopped, the run still starts, with the "none" audio driver, and says why.
QEMU as ``vm.user`` (nobody) reaches the server through ACL entries handoff
adds for the session and takes back after.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making a user and running QEMU as "
                                "root for another user's server needs root")

CHECKOUT = Path(__file__).resolve().parents[2]
USER = "handoff-snd"
WAIT = 120.0


def as_user(account: pwd.struct_passwd, *argv: str) -> list[str]:
    return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
            "--init-groups", "--", "env", "-i", f"HOME={account.pw_dir}",
            f"XDG_RUNTIME_DIR=/run/user/{account.pw_uid}", "PATH=/usr/bin:/bin", *argv]


@pytest.fixture(scope="module")
def account() -> Iterator[pwd.struct_passwd]:
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        pytest.fail("pulseaudio and pactl (Debian's pulseaudio, pulseaudio-utils) are needed: "
                    "bash contrib/install.sh --dev installs them")
    subprocess.run(["userdel", "-r", USER], capture_output=True, check=False)
    home = Path(f"/tmp/{USER}-home")
    shutil.rmtree(home, ignore_errors=True)
    subprocess.run(["useradd", "--no-user-group", "-g", "users", "-d", str(home), "-m",
                    "-s", "/usr/sbin/nologin", USER], check=True, capture_output=True)
    entry = pwd.getpwnam(USER)
    runtime = Path(f"/run/user/{entry.pw_uid}")
    runtime.mkdir(parents=True, exist_ok=True)
    os.chown(runtime, entry.pw_uid, entry.pw_gid)
    runtime.chmod(0o700)
    try:
        yield entry
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
        subprocess.run(["userdel", "-r", USER], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pulseaudio(account: pwd.struct_passwd) -> Iterator[subprocess.Popen[bytes]]:
    server = subprocess.Popen(as_user(
        account, "pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
        "--disallow-exit", "-n", "--load=module-null-sink",
        "--load=module-native-protocol-unix", "--log-target=stderr",
    ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    socket = Path(f"/run/user/{account.pw_uid}/pulse/native")
    deadline = time.monotonic() + WAIT
    while not socket.is_socket() or pactl(account, "info").returncode != 0:
        assert server.poll() is None, "pulseaudio exited"
        assert time.monotonic() < deadline, "pulseaudio did not come up"
        time.sleep(0.2)
    try:
        yield server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=WAIT)


def pactl(account: pwd.struct_passwd, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_user(account, "pactl", *argv), capture_output=True, text=True,
                          check=False, timeout=WAIT)


def profile(tmp_path: Path, vm: str = "") -> Path:
    path = tmp_path / "snd.toml"
    path.write_text(
        '[vm]\nname = "snd"\nmemory = "64M"\ncpus = 1\naccel = "tcg"\nshutdown_timeout = 1\n'
        f'{vm}'
        '[display]\nvga = "none"\nfrontend = "none"\n'
        f'[sound]\nmodel = "hda"\nbackend = "pa"\nuser = "{USER}"\nlatency_ms = 30\n'
    )
    return path


def run(tmp_path: Path, vm: str = "", run_dir: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "handoff", "run", str(profile(tmp_path, vm))],
        # A cache of its own: QEMU's capabilities as installed now (pa is a module).
        env={**os.environ, "HANDOFF_RUN_DIR": str(run_dir or tmp_path / "run"),
             "HANDOFF_CACHE_DIR": str(tmp_path / "cache")}, cwd=CHECKOUT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def until_running(session: subprocess.Popen[str]) -> str:
    assert session.stdout is not None
    seen = ""
    deadline = time.monotonic() + WAIT
    while "running (stop" not in seen:
        line = session.stdout.readline()
        assert line, f"the session ended:\n{seen}"
        assert time.monotonic() < deadline, seen
        seen += line
    return seen


def stop(session: subprocess.Popen[str]) -> str:
    session.send_signal(signal.SIGINT)
    out, _ = session.communicate(timeout=WAIT)
    return out


def test_qemu_started_as_root_is_a_client_of_the_users_pulseaudio(
    tmp_path: Path, account: pwd.struct_passwd, pulseaudio: subprocess.Popen[bytes]
) -> None:
    before = pactl(account, "list", "clients").stdout
    assert "qemu" not in before.lower()
    session = run(tmp_path)
    try:
        banner = until_running(session)
        assert "no sound" not in banner
        deadline = time.monotonic() + WAIT
        while "qemu" not in (clients := pactl(account, "list", "clients").stdout).lower():
            assert time.monotonic() < deadline, clients
            time.sleep(0.5)
        assert 'application.process.binary = "qemu-system-x86_64"' in clients
        assert 'application.process.user = "root"' in clients
    finally:
        out = stop(session)
    assert session.returncode == 130, out


def test_with_no_server_the_run_starts_and_says_why_there_is_no_sound(
    tmp_path: Path, account: pwd.struct_passwd
) -> None:
    socket = Path(f"/run/user/{account.pw_uid}/pulse/native")
    assert not socket.exists()
    session = run(tmp_path)
    try:
        banner = until_running(session)
        assert (f"handoff: no sound on the host: no sound server: {socket} does not exist; the "
                "VM runs without it") in banner
    finally:
        out = stop(session)
    assert session.returncode == 130, out
    log_argv = subprocess.run(
        [sys.executable, "-m", "handoff", "argv", str(profile(tmp_path))], cwd=CHECKOUT,
        env={**os.environ, "HANDOFF_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True, text=True, check=True).stdout
    assert "-audiodev none,id=snd0" in log_argv


def acl_users(path: Path) -> list[str]:
    shown = subprocess.run(["getfacl", "--absolute-names", "--omit-header", str(path)],
                           capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1] for line in shown.splitlines()
            if line.startswith("user:") and line.split(":")[1]]


def test_qemu_as_vm_user_reaches_the_server_through_acls_taken_back_after(
    tmp_path: Path, account: pwd.struct_passwd, pulseaudio: subprocess.Popen[bytes]
) -> None:
    runtime = Path(f"/run/user/{account.pw_uid}")
    socket = runtime / "pulse" / "native"
    paths = (runtime, socket.parent, socket)
    assert [acl_users(p) for p in paths] == [[], [], []]
    run_dir = Path(tempfile.mkdtemp(prefix="handoff-snd-", dir="/run"))  # nobody may enter
    run_dir.chmod(0o755)
    try:
        session = run(tmp_path, 'user = "nobody"\n', run_dir)
        try:
            banner = until_running(session)
            assert f"sound: nobody may reach {USER}'s server {socket} while the VM runs" in banner
            assert [acl_users(p) for p in paths] == [["nobody"], ["nobody"], ["nobody"]]
            deadline = time.monotonic() + WAIT
            while "qemu" not in (clients := pactl(account, "list", "clients").stdout).lower():
                assert time.monotonic() < deadline, clients
                time.sleep(0.5)
            assert 'application.process.user = "nobody"' in clients
        finally:
            out = stop(session)
        assert session.returncode == 130, out
        assert [acl_users(p) for p in paths] == [[], [], []]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
