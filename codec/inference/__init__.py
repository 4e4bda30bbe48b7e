"""TODO (codec/inference)."""
