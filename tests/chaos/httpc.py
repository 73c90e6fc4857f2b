"""A minimal HTTP client for the observer namespace (stdlib only, starts fast).

It never raises for HTTP or network errors: the workload needs to classify every
answer (ok, a definite failure, or unknown), so the status, body and error come back
as data.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Reply", "call"]


@dataclass
class Reply:
    status: int  # 0 when no HTTP answer arrived
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""  # "timeout", "refused", ... when status is 0

    @property
    def index(self) -> int:
        try:
            return int(self.headers.get("X-Consul-Index", "0"))
        except ValueError:
            return 0

    @property
    def known_leader(self) -> bool | None:
        v = self.headers.get("X-Consul-Knownleader")
        return None if v is None else v == "true"


def call(method: str, addr: str, path: str, body: Any = None, timeout: float = 5.0) -> Reply:
    """One request to http://addr/path; JSON bodies decoded when possible."""
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        raw = resp.read()
        headers = {k.title() if k.lower().startswith("x-") else k: v for k, v in resp.getheaders()}
        try:
            payload: Any = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        return Reply(resp.status, payload, headers)
    except TimeoutError:
        return Reply(0, error="timeout")
    except ConnectionRefusedError:
        return Reply(0, error="refused")
    except OSError as exc:
        return Reply(0, error=type(exc).__name__ + ": " + str(exc)[:80])
    except http.client.HTTPException as exc:
        return Reply(0, error=type(exc).__name__)
    finally:
        conn.close()
