"""streambed: services/api."""
