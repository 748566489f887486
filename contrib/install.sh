#!/usr/bin/env bash
# contrib/install.sh - install handoff and what it needs on a Debian (or Ubuntu) host, as root.
#
#   bash contrib/install.sh          QEMU + handoff in /opt/handoff, `handoff` in /usr/local/bin
#   bash contrib/install.sh --dev    also the test tools and testbed packages; handoff is
#                                    installed editable into ./.venv of this checkout
#   bash contrib/install.sh --which-python   print the interpreter the install would use
#
# Idempotent: packages already present are not fetched again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dev=0
which_python=0
prefix=/opt/handoff
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --which-python) which_python=1 ;;
    --prefix) prefix=$2; shift ;;
    *) echo "install.sh: unknown option $1 (use --dev, --prefix DIR or --which-python)" >&2; exit 2 ;;
  esac
  shift
done
log() { echo "[install] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run me as root (apt-get and /opt need it)"; exit 2; }

# A python3 >= 3.11 with venv: the first on PATH (pyenv, distribution), else Debian's.
# The system install's venv links its interpreter: it must be one every user can run
# (a desktop user's `handoff switch`), never one in root's private home (pyenv).
runs_for_everyone() {
  # (through env: setpriv itself looks the program up before it drops root)
  setpriv --reuid=65534 --regid=65534 --clear-groups -- env "$1" -c 'import sys, venv' 2>/dev/null
}
choose_python() {
  py=$(command -v python3 || echo /usr/bin/python3)
  if ! "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    py=/usr/bin/python3
  fi
  if [ "$dev" = 0 ] && ! runs_for_everyone "$py"; then
    log "$py is not usable by other users: the system install uses /usr/bin/python3"
    py=/usr/bin/python3
  fi
}
if [ "$which_python" = 1 ]; then choose_python; echo "$py"; exit 0; fi

# Runtime: QEMU (x86 system emulator + firmware), kmod for modprobe, pciutils for lspci.
apt_pkgs=(qemu-system-x86 qemu-utils ovmf kmod pciutils udev python3 python3-venv)
# [sound] backend = "pa": QEMU's PulseAudio driver is a module of Debian's qemu-system-gui.
apt_pkgs+=(qemu-system-gui)
# [sound] user with vm.user: setfacl/getfacl give QEMU's account the way to the socket.
apt_pkgs+=(acl)
# Tests: the testbed guest (busybox initramfs, the Debian kernel unpacked with dpkg,
# systemd-udevd inside the guest from the host's udev package; the testbed's systemd
# boot runs the host's /lib/systemd/systemd as the guest's PID 1).
[ "$dev" = 1 ] && apt_pkgs+=(busybox-static cpio systemd)
# [tpm] type = "emulated": swtpm runs the guest's TPM 2.0, swtpm_setup creates its state.
apt_pkgs+=(swtpm swtpm-tools)
# Tests: the guest agent test's Linux guest runs Debian's qemu-ga (tests/qemu/linux_guest.py).
[ "$dev" = 1 ] && apt_pkgs+=(qemu-guest-agent)
# Tests of the generated completions and man page run the real shells and groff.
[ "$dev" = 1 ] && apt_pkgs+=(zsh fish groff-base)
# Tests of `handoff import`/`export` against libvirt's own tools: virt-install --print-xml,
# virt-xml-validate, and a libvirtd (QEMU driver) the tests start for define/start/
# domxml-to-native. handoff itself never needs libvirt.
[ "$dev" = 1 ] && apt_pkgs+=(libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients virtinst)
# The Secure Boot test (tests/qemu/test_secure_boot.py) builds a disk from Debian's
# signed chain: shim signed by Microsoft (shim-signed, MokManager from
# shim-helpers-amd64-signed), the signed GRUB and its unsigned twin, and makes the
# ESP and GPT without root with mtools and sfdisk (fdisk). The signed kernel is the
# testbed's (linux-image-amd64's image package, fetched with apt-get download).
[ "$dev" = 1 ] && apt_pkgs+=(shim-signed shim-helpers-amd64-signed)
[ "$dev" = 1 ] && apt_pkgs+=(grub-efi-amd64-signed grub-efi-amd64-bin)
[ "$dev" = 1 ] && apt_pkgs+=(mtools fdisk)
# [sound] user's proof (tests/qemu/test_desk_sound.py): a real PulseAudio and its pactl.
[ "$dev" = 1 ] && apt_pkgs+=(pulseaudio pulseaudio-utils)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

choose_python

if [ "$dev" = 1 ]; then
  venv=$here/.venv
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here[dev]"
  log "handoff (editable, with test tools) in $venv"
else
  if [ -x "$prefix/bin/python" ] && ! runs_for_everyone "$prefix/bin/python"; then
    log "$prefix links an interpreter other users cannot run: recreating it"
    "$py" -m venv --clear "$prefix"
  fi
  [ -x "$prefix/bin/python" ] || "$py" -m venv "$prefix"
  "$prefix/bin/python" -m pip install -q --disable-pip-version-check "$here"
  ln -sf "$prefix/bin/handoff" /usr/local/bin/handoff
  log "handoff installed in $prefix, command /usr/local/bin/handoff"
fi

# Shell completions and the man page (generated from the CLI, see contrib/README.md).
if [ "$dev" = 0 ]; then
  install -D -m 0644 "$here/contrib/completions/handoff.bash" /usr/share/bash-completion/completions/handoff
  install -D -m 0644 "$here/contrib/completions/_handoff" /usr/share/zsh/vendor-completions/_handoff
  install -D -m 0644 "$here/contrib/completions/handoff.fish" /usr/share/fish/vendor_completions.d/handoff.fish
  install -D -m 0644 "$here/contrib/man/handoff.1" /usr/local/share/man/man1/handoff.1
  log "completions (bash, zsh, fish) and man page installed"
  [ -e /etc/udev/rules.d/70-handoff.rules ] ||
    log "to run handoff without root: see contrib/udev/70-handoff.rules (and handoff doctor)"
fi
