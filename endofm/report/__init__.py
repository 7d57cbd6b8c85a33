"""Pictures of what a model does: attention maps (and the run report)."""
