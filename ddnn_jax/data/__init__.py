"""Datasets and the input pipeline: tfds loading, offline preparation, normalisation, augmentation."""
