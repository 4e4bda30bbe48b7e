"""TODO (codec/data)."""
