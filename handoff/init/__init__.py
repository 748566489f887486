"""`handoff init`: a working profile written from the host's own hardware.

One job per module: :mod:`.facts` (the frozen snapshot of the host the
choices are made from), :mod:`.gather` (the read-only edge that takes it:
the GPU engine's own sysfs readers, /proc/meminfo, CPU topology, pci.ids,
OVMF files, the input layer's device discovery, mounts), :mod:`.choose`
(pure: facts + the command's options -> choices, each with its reason, or an
:class:`~handoff.base.errors.HandoffError` with the fix) and :mod:`.render`
(pure: choices -> the commented profile text and the terminal summary).
Whether a GPU's group can be passed through is never decided here: that is
:func:`handoff.pci.plan.group_verdict`, the verdict `handoff groups` prints.
"""
