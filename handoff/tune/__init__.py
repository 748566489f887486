"""VM performance tuning: vCPU pinning, hugepages, host isolation and cpufreq governor.

Pure planners (model, cpulist, pinning, hugepages, governor, isolation) decide
from what :mod:`handoff.tune.topology` reads from sysfs; applying the plans
(QMP, sysfs writes, systemd) and undoing them is the session's job.
"""
