"""fedloom.protocols."""
