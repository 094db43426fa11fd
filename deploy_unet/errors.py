"""Errors a user can cause, each carrying the exit code the CLI returns for it.

The CLI prints ``error: <message>`` for these and never a traceback; anything else is a bug.
"""


class DeployUnetError(Exception):
    """A user-facing error: one line naming the value, the rule it broke and the fix."""

    exit_code = 2


class ConfigError(DeployUnetError, ValueError):
    """An unknown net name, an unknown or invalid option, a malformed argument."""


class ShapeContractError(DeployUnetError, ValueError):
    """An input shape that breaks the net's divisibility contract or its channel count."""


class ArtifactError(DeployUnetError):
    """A missing, unreadable or mismatched file (checkpoint, ONNX, engine, cache, data)."""


class MissingDependencyError(DeployUnetError):
    """An optional package or device the command needs is not there; the message says how to get it."""


class GateFailedError(DeployUnetError):
    """A validation or accuracy gate failed: the run worked, the result is not good enough."""

    exit_code = 1


class InputsSkippedError(DeployUnetError):
    """Some inputs could not be read and were skipped; the others were processed and written."""

    exit_code = 1
