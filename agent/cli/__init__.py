"""mesh.agent.cli package: the `mesh` command."""
