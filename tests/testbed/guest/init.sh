#!/bin/busybox sh
# PID 1 of the testbed guest. It lives in the initramfs (busybox only) and never
# exits: it assembles the guest's root (the host's root, read-only over 9p, under
# a tmpfs overlay), mounts the kernel's modules, the per-run share (/tb) and the
# checkout (read-write, at its own path), chroots into it to run stage2.sh, writes
# the exit code to the share and powers off (INIT=systemd: it switch_roots to the
# host's systemd instead, see below). Every mount failure ends the run
# with exit code 126 and a line naming what failed, so the host never waits for
# a guest that cannot get going.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
die() {
  echo "TESTBED-INIT: $*"
  echo 126 > /share/rc 2>/dev/null
  sync
  poweroff -f
  sleep 60
}
up() { cut -d' ' -f1 /proc/uptime; }
for m in $(cat /mods/order); do insmod "/mods/$m.ko" 2>/dev/null; done
P9="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$P9,cache=none" tbshare /share || die "mount of the run share (tbshare) failed"
. /share/guest.conf   # KVER, RW_DIR, RW_CACHE
mount -t 9p -o "$P9,cache=loose,ro" hostroot /lower || die "mount of the host root (hostroot) failed"
mount -t tmpfs -o mode=755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
  || die "overlay mount of the guest root failed"
R=/newroot
mkdir -p "$R/lib/modules/$KVER" "$R/tb"
mount -t 9p -o "$P9,cache=loose,ro" modules "$R/lib/modules/$KVER" || die "mount of the kernel modules failed"
mount --bind /share "$R/tb"
mount -t proc proc "$R/proc"
mount -t sysfs sys "$R/sys"
mount -t devtmpfs dev "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts devpts "$R/dev/pts"
mount -t tmpfs tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t debugfs debugfs "$R/sys/kernel/debug" 2>/dev/null
if [ -n "$RW_DIR" ]; then
  mkdir -p "$R$RW_DIR"
  mount -t 9p -o "$P9,cache=$RW_CACHE" rwdir "$R$RW_DIR" || die "mount of the checkout $RW_DIR failed"
fi
hostname testbed
ip link set lo up 2>/dev/null
stty -onlcr < /dev/console 2>/dev/null
if [ "${INIT:-classic}" = systemd ]; then
  # The systemd boot: the runner's overlay (units, masks, journald.conf) goes over
  # the root, then the host's systemd becomes PID 1; testbed.service runs the
  # command, writes /tb/rc and powers off (runner.systemd_overlay).
  [ -x "$R/lib/systemd/systemd" ] || die "no /lib/systemd/systemd on the host: apt-get install systemd"
  cp -a /share/overlay/. "$R/" || die "copying the systemd overlay into the guest root failed"
  # A host that is a container says so in its root: systemd would believe it runs in
  # one (no kernel command line, no udev coldplug). The guest is a VM.
  rm -f "$R/.dockerenv" "$R/run/.containerenv" "$R/run/systemd/container"
    echo "TESTBED: starting systemd uptime=$(up)"
  exec switch_root -c /dev/console "$R" /lib/systemd/systemd
fi
echo "TESTBED: guest ready uptime=$(up)"
chroot "$R" /bin/sh /tb/stage2.sh < /dev/null > /dev/console 2>&1
rc=$?
echo "$rc" > /share/rc
sync
echo "TESTBED: command exited rc=$rc uptime=$(up)"
poweroff -f
sleep 60
