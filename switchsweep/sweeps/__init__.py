"""A sweep's orchestration: search spaces, Tune + Optuna wiring, ASHA and its gates, the driver (`run`),
a trial's Tune side (`trial`) and worker side (`worker`, handed a `worker_spec.WorkerSpec`), the Tune
callback that writes the sweep's record, failures and the console."""
