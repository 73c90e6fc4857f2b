"""The HTTP-aware (L7) path of the sidecar: HTTP/1.1 framing, routing, retries, L7 intentions."""
