"""handoff: run a GPU-passthrough VM as one foreground command.

The supervisor hands the GPU (its whole IOMMU group) and the keyboard and
mouse to the guest for the VM's life and gives them back however it ends.
README.md ("For developers") and each module's docstring describe the architecture.
"""

__version__ = "0.1.0"
