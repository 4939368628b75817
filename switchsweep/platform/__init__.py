"""The ground floor: config schema and validation, errors, checkpoints. Imports no other subpackage."""
