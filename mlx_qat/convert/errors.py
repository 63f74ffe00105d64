"""Errors `convert` raises: each message names the input, the problem and the fix."""

from __future__ import annotations


class ConvertError(ValueError):
    """Bad input or options: a missing/corrupt run, a format mismatch, an existing output."""


class ParityError(ConvertError):
    """The exported model's validation loss differs from the fake-quant model's.

    Attributes:
        report: the `ParityReport` with both losses and the relative difference.
    """

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
