"""Evaluation: feature networks (the digits classifier, InceptionV3), sample-quality metrics over their
features (FID, KID, IS, precision/recall), and a model's evaluation in batches."""
