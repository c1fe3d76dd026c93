"""fedloom: federated learning and federated analytics."""
