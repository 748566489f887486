"""Shared pytest set-up: see tests/README.md for the three layers of tests.

The testbed plugin batches every selected ``realkernel`` test into one boot of
the real-kernel VM and relays the guest's results into this run; pytester lets
the testbed's own host-side tests run inner pytest sessions.
"""

import os

# pytester (inner pytest runs for the testbed's host-side tests) is not needed
# in the guest, where every import costs 12-15x.
pytest_plugins = ["tests.testbed.plugin"]
if os.environ.get("TESTBED") != "1":
    pytest_plugins.append("pytester")
