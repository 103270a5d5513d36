"""streambed: services/ann."""
