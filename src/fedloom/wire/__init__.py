"""fedloom.wire."""
