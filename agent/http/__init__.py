"""mesh.agent.http package."""
