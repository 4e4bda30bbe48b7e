"""TODO (codec/training)."""
