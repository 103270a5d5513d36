"""streambed: stream."""
