"""TODO (codec/cli)."""
