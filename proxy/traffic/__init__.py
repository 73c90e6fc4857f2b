"""Traffic policy for the sidecar: pure decisions on which instance, whether to eject,
rate-limit or shed a request (load balancing, outlier detection, rate limits, circuit breaking)."""
