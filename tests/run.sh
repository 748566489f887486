#!/usr/bin/env bash
# tests/run.sh - the whole test suite, on a fresh Debian machine as root.
#
# Installs what the tests need (contrib/install.sh --dev: QEMU, the testbed's packages,
# a venv with the test tools), then runs ruff, mypy --strict and pytest, including the
# tests that start real QEMU and the `realkernel` tests that run in the testbed VM.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -m 'not realkernel'`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/install.sh --dev
py=.venv/bin/python
echo "== ruff"; "$py" -m ruff check .
echo "== mypy --strict"; "$py" -m mypy
echo "== pytest"
set +e
"$py" -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "tests/run.sh: pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
