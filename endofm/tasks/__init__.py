"""Applying models to data: feature extraction (and, later, the downstream tasks)."""
