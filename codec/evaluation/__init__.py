"""Evaluation: metrics, the Opus baseline, evaluation sets, the report, the evaluate stage."""
