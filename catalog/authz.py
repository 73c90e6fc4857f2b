"""Intention authorization: precedence, matching and the allow/deny decision. Pure.

Precedence (higher wins), with the namespace always `default`:

    source \\ destination   exact   *
    exact                    9      6
    *                        8      5

Ties sort by source then destination name. The first intention, in that order, whose
source and destination match decides; an intention with L7 Permissions denies for the
L4 authorize and check calls (the L7 path will evaluate its permissions here). When
nothing matches, the agent's default policy applies. Used by the agent's intention
cache, the server's queries and the proxy's inbound authorization alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .structs import Intention

__all__ = ["WILDCARD", "Decision", "precedence", "sort_intentions", "decide", "IntentionIndex"]

WILDCARD = "*"


def precedence(source: str, destination: str) -> int:
    """9, 8, 6 or 5: exact names outrank wildcards, the destination counts most."""
    top = 9 if destination != WILDCARD else 6
    return top - (0 if source != WILDCARD else 1)


def sort_intentions(intentions: Iterable[Intention]) -> list[Intention]:
    """Precedence order: the order in which intentions are tried."""
    return sorted(intentions, key=lambda i: (-i.precedence, i.source_name, i.destination_name))


@dataclass(frozen=True)
class Decision:
    """The outcome of one authorization, with the intention that decided it (if any)."""

    allowed: bool
    reason: str
    intention: Intention | None = None


def _matches(pattern: str, name: str) -> bool:
    return pattern == WILDCARD or pattern.lower() == name.lower()


def decide(ordered: Iterable[Intention], source: str, destination: str, default_allow: bool) -> Decision:
    """First match in precedence order decides; nothing matching: the default."""
    for intention in ordered:
        if _matches(intention.destination_name, destination) and _matches(intention.source_name, source):
            if intention.permissions:
                return Decision(False, f"Matched L7 intention {intention.label()}: L4 access denied", intention)
            allowed = intention.action == "allow"
            return Decision(allowed, f"Matched L4 intention: {intention.label()}", intention)
    policy = "allow" if default_allow else "deny"
    return Decision(default_allow, f"Default behavior: no intention matched, the default policy is {policy}")


class IntentionIndex:
    """Intentions grouped by destination, each group in precedence order, so a
    decision reads only the intentions for that destination and for `*`: its cost does
    not grow with the total number of intentions."""

    def __init__(self, intentions: Iterable[Intention]) -> None:
        by_dest: dict[str, list[Intention]] = {}
        for intention in intentions:
            by_dest.setdefault(intention.destination_name.lower(), []).append(intention)
        self._by_dest = {k: sort_intentions(v) for k, v in by_dest.items()}
        self._wild = self._by_dest.get(WILDCARD, [])

    def decide(self, source: str, destination: str, default_allow: bool) -> Decision:
        exact = self._by_dest.get(destination.lower(), [])
        if exact and self._wild:
            # exact destinations (precedence 8-9) always come before wildcard ones (5-6)
            ordered: Iterable[Intention] = (*exact, *self._wild)
        else:
            ordered = exact or self._wild
        return decide(ordered, source, destination, default_allow)
