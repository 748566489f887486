"""Shared pytest set-up: see tests/README.md for the three layers of tests.

The testbed plugin batches every selected ``realkernel`` test into one boot of
the real-kernel VM and relays the guest's results into this run.
"""

pytest_plugins = ["tests.testbed.plugin"]
