"""mesh: a small service mesh for VMs and bare metal, wire-compatible with Consul.

The repository root is this package; see ../DESIGN.md (shared) for the layout.
"""

__version__ = "0.1.0"
