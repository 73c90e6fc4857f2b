"""Both backends implement the whole contract the local agent relies on (agent/backend.py)."""

from __future__ import annotations

import inspect

import pytest

from mesh.agent.backend import Backend, LocalBackend, RemoteBackend, ServerOperations


def _methods(protocol: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(protocol).items()
            if callable(fn) and not name.startswith("_")}


@pytest.mark.parametrize(("impl", "protocol"), [
    (LocalBackend, Backend), (RemoteBackend, Backend), (LocalBackend, ServerOperations),
])
def test_backend_implements_the_contract(impl, protocol):
    wanted = _methods(protocol)
    assert wanted, protocol
    for name, sig in wanted.items():
        fn = getattr(impl, name, None)
        assert fn is not None, f"{impl.__name__} lacks {name}"
        assert inspect.iscoroutinefunction(fn) == inspect.iscoroutinefunction(getattr(protocol, name)), name
        assert list(inspect.signature(fn).parameters) == list(sig.parameters), f"{impl.__name__}.{name}{sig}"
