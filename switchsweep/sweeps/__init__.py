"""Search spaces, Tune + Optuna wiring, schedulers, resume, result tables."""
