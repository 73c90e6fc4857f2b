"""Health-check runners of the agent: a pure status state machine and one asyncio runner per check kind."""
