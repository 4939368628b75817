"""Results of a sweep: its trials read from MLflow, ranked with their noise, and rendered as tables,
sentences and exported configs."""
