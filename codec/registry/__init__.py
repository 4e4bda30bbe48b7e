"""TODO (codec/registry)."""
