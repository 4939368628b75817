"""Errors the CLI turns into one line and a non-zero exit code, without a traceback."""


class SwitchsweepError(Exception):
    """A user-facing failure: the message names the field or file and the fix."""

    exit_code = 1


class ConfigError(SwitchsweepError):
    """An invalid configuration value (exit code 2, before any data or model work)."""

    exit_code = 2


class CheckpointError(SwitchsweepError):
    """A missing, corrupt or incompatible checkpoint."""

    exit_code = 2


class TrainingError(SwitchsweepError):
    """A run that cannot go on (for example a non-finite loss); the last good checkpoint is kept."""
