"""Telemetry: JSON logs that carry trace and request ids, OpenTelemetry spans."""
