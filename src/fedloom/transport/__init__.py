"""fedloom.transport."""
