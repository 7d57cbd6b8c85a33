"""endofm."""
