"""Errors people can act on: each says what is wrong and how to fix it.

One place maps an error's kind to a CLI exit status and an HTTP status, so the
CLI, the server and the Python API agree on what "bad input" means.
"""
from __future__ import annotations


class EdgekitError(Exception):
    """Base class: a message for humans, a hint for the fix, an exit status, an HTTP status."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class BadInput(EdgekitError):
    """The user gave something we cannot use: a wrong path, option, or data file."""

    exit_code = 2
    http_status = 400


class NotFound(BadInput):
    """A named thing (signature, model, version) does not exist."""

    http_status = 404


class MissingDependency(EdgekitError):
    """An optional package this job needs is not installed."""

    exit_code = 2


class FlexOpsRequired(EdgekitError):
    """A .tflite needs SELECT_TF_OPS (flex), which no Python LiteRT wheel can run."""

    exit_code = 1
    http_status = 400


class ConversionFailed(EdgekitError):
    """TFLite (or another target) could not produce an artifact for this model."""

    exit_code = 1


class Unavailable(EdgekitError):
    """The thing exists but cannot answer yet (a model still loading)."""

    http_status = 503


class Unauthorized(EdgekitError):
    """A request without the right API key."""

    http_status = 401


class PayloadTooLarge(BadInput):
    """A request over one of the server's size limits (body, tensor elements, memory)."""

    http_status = 413


class ServerBusy(Unavailable):
    """The server could not admit the request in time (memory, connections); retry later."""


class NotImplementedHere(EdgekitError):
    """A TF Serving API edgekit deliberately does not offer."""

    http_status = 501
