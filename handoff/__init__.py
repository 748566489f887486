"""handoff: run a GPU-passthrough VM as one foreground command.

The supervisor hands the GPU (its whole IOMMU group) and the keyboard and
mouse to the guest for the VM's life and gives them back however it ends.
See shared/DESIGN.md in the project for the architecture.
"""

__version__ = "0.1.0"
