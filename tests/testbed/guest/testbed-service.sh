#!/bin/sh
# ExecStart of testbed.service in the systemd boot (runner.systemd_overlay): systemd
# is PID 1 and has reached testbed.target's basic system. Runs stage2.sh (and so
# /tb/command.sh), writes its exit code to the run share, and returns: the unit's
# SuccessAction/FailureAction then powers the guest off.
up() { cut -d' ' -f1 /proc/uptime; }
echo "TESTBED: guest ready (systemd) uptime=$(up)"
/bin/sh /tb/stage2.sh
rc=$?
echo "$rc" > /tb/rc
sync
echo "TESTBED: command exited rc=$rc uptime=$(up)"
