"""TODO (codec/model)."""
