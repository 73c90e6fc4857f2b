"""mesh.ca package."""
