"""The running service: workers, logs, metrics, the store, shared limits, webhooks."""
