"""Shared pytest set-up: see tests/README.md for the three layers of tests.

The testbed plugin batches every selected ``realkernel`` test into one boot of
the real-kernel VM and relays the guest's results into this run; pytester lets
the testbed's own host-side tests run inner pytest sessions.
"""

pytest_plugins = ["pytester", "tests.testbed.plugin"]
