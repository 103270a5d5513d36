"""streambed: services/kafka."""
