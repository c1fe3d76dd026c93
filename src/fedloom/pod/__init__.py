"""fedloom.pod."""
