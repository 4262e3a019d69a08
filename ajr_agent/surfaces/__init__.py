"""What faces people and other programs: `ajr`, the `ajr-agent` service, the cockpit and its API, metrics, notifications."""
