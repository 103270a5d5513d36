"""streambed: services/datagen."""
