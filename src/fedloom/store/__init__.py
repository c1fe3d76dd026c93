"""fedloom.store."""
