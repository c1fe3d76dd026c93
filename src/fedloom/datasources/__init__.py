"""fedloom.datasources."""
