"""fedloom.cli."""
