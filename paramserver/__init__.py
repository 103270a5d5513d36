"""streambed: paramserver."""
