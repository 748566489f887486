#!/bin/sh
# Second stage of the testbed guest, run by init.sh inside the assembled root
# (the host's root as the guest sees it), or in the systemd boot by
# testbed-service.sh (udevd is then systemd's: only its settle is awaited). Starts the host's own systemd-udevd,
# so device nodes, by-path links, ID_INPUT_* properties and module loading are
# udev's, as on a desktop; then runs the command from /tb/command.sh.
#
# SYSTEMD_IGNORE_CHROOT: udevadm refuses trigger/settle "in a chroot"; this guest
# is a chroot only technically (PID 1 is busybox in the initramfs).
# TESTBED_UDEV=background: the command starts while udev settles (pytest's start-up
# costs more than the settle under TCG); /run/testbed/udev-settled appears when
# it is done, holding settle's exit code (the `udev` fixture waits for it).
set -u
. /tb/env.sh
export SYSTEMD_IGNORE_CHROOT=1
up() { cut -d' ' -f1 /proc/uptime; }
mkdir -p /run/testbed
modprobe -qa evdev uinput
udevd=/lib/systemd/systemd-udevd
[ -x "$udevd" ] || udevd=/usr/lib/systemd/systemd-udevd
coldplug() {
  if [ "${TESTBED_INIT:-classic}" = systemd ]; then
    # systemd started systemd-udevd and systemd-udev-trigger.service: only wait.
    udevadm settle --timeout=120
    rc=$?
    [ "$rc" = 0 ] || echo "TESTBED: udevadm settle failed rc=$rc"
    echo "TESTBED: udev settled uptime=$(up)"
  elif [ -x "$udevd" ]; then
    "$udevd" --daemon
    udevadm trigger --type=subsystems --action=add
    udevadm trigger --type=devices --action=add
    udevadm settle --timeout=120
    rc=$?
    [ "$rc" = 0 ] || echo "TESTBED: udevadm settle failed rc=$rc"
    echo "TESTBED: udev settled uptime=$(up)"
  else
    # No udev on the host: load drivers for the PCI devices by their modaliases.
    echo "TESTBED: no systemd-udevd on the host (install the udev package); coldplug by modalias"
    cat /sys/bus/pci/devices/*/modalias | xargs modprobe -qa 2>/dev/null
    rc=1
  fi
  echo "$rc" > /run/testbed/udev-settled.tmp
  mv /run/testbed/udev-settled.tmp /run/testbed/udev-settled
}
if [ "${TESTBED_UDEV:-foreground}" = background ]; then
  coldplug &
else
  coldplug
fi
echo "TESTBED: running command uptime=$(up)"
. /tb/command.sh
