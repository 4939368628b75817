"""The ground floor, importing no other subpackage: the config schema and its composition, errors,
checkpoints and atomic files, a sweep's folder and its one record, Ray start-up, storage, MLflow
tracking, and the ranking and export of a sweep's results."""
