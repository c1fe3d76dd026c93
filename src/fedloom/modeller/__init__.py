"""fedloom.modeller."""
