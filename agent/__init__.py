"""mesh.agent package."""
