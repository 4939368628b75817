"""switchsweep: experiment sweeps over the Switch-DiT design space."""

__version__ = "0.1.0"
