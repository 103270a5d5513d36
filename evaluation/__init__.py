"""Offline evaluation: prequential replay of a stream against baselines."""
