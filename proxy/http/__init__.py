"""The HTTP-aware sidecar: pure per-request decisions (normalization, authorization, routing, retries, tracing, access logs)."""
