"""Offline stage of llark-jax: audio, annotation, datasets, instructions, encoders, TFRecords."""
