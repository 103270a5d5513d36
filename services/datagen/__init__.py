"""Seeded synthetic interaction streams (see :mod:`services.datagen.generator`)."""

from services.datagen.generator import GeneratorConfig, InteractionGenerator, ItemInfo

__all__ = ["GeneratorConfig", "InteractionGenerator", "ItemInfo"]
