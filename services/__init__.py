"""streambed: services."""
