"""TODO (codec/evaluation)."""
