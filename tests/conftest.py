"""Shared pytest set-up: see tests/README.md for the three layers of tests."""
