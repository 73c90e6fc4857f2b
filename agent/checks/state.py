"""Consul's check status state machine: consecutive-result thresholds before a status is reported.

Pure (no clock, no I/O): a runner feeds it every probe result and reports only what it
returns. This is Consul's StatusHandler: `passing` and `warning` results count as
successes and are reported once `success_before_passing` of them come in a row;
`critical` results count as failures, reported as `warning` after
`failures_before_warning` in a row and as `critical` after `failures_before_critical`.
A threshold of 0 (or 1) reports at once; an unset warning threshold takes the critical
one, so a check with only `failures_before_critical = 3` stays as it is for two failures.
Any success resets the failure count and any failure resets the success count.
"""

from __future__ import annotations

from mesh.catalog.structs import CRITICAL, HEALTH_STATES, PASSING, WARNING

__all__ = ["CheckState"]


class CheckState:
    """The reported status of one check and the counters that gate its changes."""

    def __init__(
        self,
        initial: str = CRITICAL,
        *,
        success_before_passing: int = 0,
        failures_before_warning: int = 0,
        failures_before_critical: int = 0,
    ) -> None:
        if initial not in HEALTH_STATES:
            raise ValueError(f"unknown check status {initial!r}")
        self.status = initial
        self.output = ""
        self.success_before_passing = success_before_passing
        self.failures_before_critical = failures_before_critical
        self.failures_before_warning = failures_before_warning or failures_before_critical
        self.successes = 0
        self.failures = 0

    def observe(self, status: str, output: str) -> tuple[str, str] | None:
        """Feed one probe result; the (status, output) to report, or None while a
        threshold holds the reported status back."""
        if status not in HEALTH_STATES:
            raise ValueError(f"unknown check status {status!r}")
        if status in (PASSING, WARNING):
            self.successes += 1
            self.failures = 0
            if self.successes >= self.success_before_passing:
                return self._report(status, output)
            return None
        self.failures += 1
        self.successes = 0
        if self.failures >= self.failures_before_critical:
            return self._report(CRITICAL, output)
        if self.failures >= self.failures_before_warning:
            return self._report(WARNING, output)
        return None

    def _report(self, status: str, output: str) -> tuple[str, str]:
        self.status, self.output = status, output
        return status, output
