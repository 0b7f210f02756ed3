"""Workflows that turn data and a model into a run directory, and read run directories back."""
