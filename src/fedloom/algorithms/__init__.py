"""fedloom.algorithms."""
