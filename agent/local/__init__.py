"""The agent's local state: services and checks it owns, as defined by the API or config files."""
