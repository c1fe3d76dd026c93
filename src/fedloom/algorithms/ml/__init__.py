"""fedloom.algorithms.ml."""
