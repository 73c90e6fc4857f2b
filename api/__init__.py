"""mesh.api package."""
