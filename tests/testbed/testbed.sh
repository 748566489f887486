#!/usr/bin/env bash
# testbed.sh - boot the real-kernel testbed VM and run one command in it (as root).
#
#   tests/testbed/testbed.sh [--timeout S] [--accel auto|kvm|tcg] [--keep] [--quiet] -- COMMAND...
#   tests/testbed/testbed.sh --setup-only       fetch the kernel, build the initramfs
#
# The command runs as root in the guest, in the directory you call this from,
# with the checkout read-write at its own path and this checkout's .venv first
# on PATH. Exit code: the command's, or 125 when the guest gave none.
# See tests/README.md; the runner itself is tests/testbed/runner.py.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py=python3
[ -x "$root/.venv/bin/python" ] && py=$root/.venv/bin/python
exec env PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$py" -m tests.testbed.runner "$@"
