"""mesh.catalog package."""
