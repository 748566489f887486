"""The foundation every part stands on: errors, the host's roots, the run root's names, systemd.
"""
