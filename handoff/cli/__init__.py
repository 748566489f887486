"""The commands: argument parsing, printing, exit codes (``handoff.cli.main`` is the entry point).

Empty on purpose: light commands (status, switch) import only the modules they need.
"""
