"""The training loop, `trainer.train(cfg, hooks)`, which runs alone and unchanged inside Ray, and the
EMA of the weights it keeps."""
