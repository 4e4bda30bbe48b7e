"""The model registry: gates (pure functions), promotion, registry access."""
