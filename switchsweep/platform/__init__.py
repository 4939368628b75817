"""The ground floor, importing no other subpackage: errors, atomic files, storage URIs and buckets,
checkpoints, a sweep's folder and its one record, and MLflow tracking."""
