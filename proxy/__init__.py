"""mesh.proxy package."""
