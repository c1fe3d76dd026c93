"""fedloom.testing."""
