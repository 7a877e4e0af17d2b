"""Exceptions for libdistro's status codes.

Every failed library call raises a subclass of :class:`DistroError` chosen by its status code; the
exception's text is the library's own message (``distro_last_error()``), which says what was wrong and
what was expected.
"""

from __future__ import annotations

from . import _lib

__all__ = [
    "DistroError",
    "InvalidArgument",
    "SizeError",
    "StateError",
    "NotFound",
    "Unsupported",
    "OutOfMemory",
    "CorruptError",
    "MismatchError",
    "DeviceError",
    "DistroIOError",
    "NumericError",
    "InternalError",
    "check",
    "error_for_status",
]


class DistroError(Exception):
    """A libdistro call failed. ``status`` is the distro_status code, ``status_name`` its constant's
    name ("DISTRO_ERR_CORRUPT"), and ``str(error)`` the library's message."""

    status: int = -1

    def __init__(self, message: str = "", status: int | None = None):
        super().__init__(message, status)
        if status is not None:
            self.status = status
        self.message = message

    @property
    def status_name(self) -> str:
        return _lib.status_name(self.status)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status})"


class InvalidArgument(DistroError):
    """DISTRO_ERR_INVALID_ARGUMENT: NULL where a value is needed, a value out of range."""

    status = _lib.DISTRO_ERR_INVALID_ARGUMENT


class SizeError(DistroError):
    """DISTRO_ERR_SIZE: a size or shape does not match what is expected."""

    status = _lib.DISTRO_ERR_SIZE


class StateError(DistroError):
    """DISTRO_ERR_STATE: a call in the wrong order."""

    status = _lib.DISTRO_ERR_STATE


class NotFound(DistroError):
    """DISTRO_ERR_NOT_FOUND: no such device, tensor or file."""

    status = _lib.DISTRO_ERR_NOT_FOUND


class Unsupported(DistroError):
    """DISTRO_ERR_UNSUPPORTED: the device or build lacks this operation."""

    status = _lib.DISTRO_ERR_UNSUPPORTED


class OutOfMemory(DistroError):
    """DISTRO_ERR_OUT_OF_MEMORY."""

    status = _lib.DISTRO_ERR_OUT_OF_MEMORY


class CorruptError(DistroError):
    """DISTRO_ERR_CORRUPT: malformed bytes (payload, update, file)."""

    status = _lib.DISTRO_ERR_CORRUPT


class MismatchError(DistroError):
    """DISTRO_ERR_MISMATCH: well-formed but for another run, step, manifest or version."""

    status = _lib.DISTRO_ERR_MISMATCH


class DeviceError(DistroError):
    """DISTRO_ERR_DEVICE: the device driver reported a failure."""

    status = _lib.DISTRO_ERR_DEVICE


class DistroIOError(DistroError):
    """DISTRO_ERR_IO: a file or socket operation failed."""

    status = _lib.DISTRO_ERR_IO


class NumericError(DistroError):
    """DISTRO_ERR_NUMERIC: non-finite values (NaN or infinity) in the input."""

    status = _lib.DISTRO_ERR_NUMERIC


class InternalError(DistroError):
    """DISTRO_ERR_INTERNAL: a bug in libdistro; please report it."""

    status = _lib.DISTRO_ERR_INTERNAL


_BY_STATUS = {
    cls.status: cls
    for cls in (
        InvalidArgument,
        SizeError,
        StateError,
        NotFound,
        Unsupported,
        OutOfMemory,
        CorruptError,
        MismatchError,
        DeviceError,
        DistroIOError,
        NumericError,
        InternalError,
    )
}


def error_for_status(status: int, message: str) -> DistroError:
    """The exception for a status code (DistroError itself for a code this binding does not know)."""
    return _BY_STATUS.get(status, DistroError)(message, status)


def check(status: int) -> None:
    """Raises the exception for status, carrying distro_last_error(), unless status is DISTRO_OK.
    Call it right after the failed call, on the same thread: the message is per thread and is
    replaced by the next libdistro call."""
    if status == _lib.DISTRO_OK:
        return
    message = _lib.last_error() or f"{_lib.status_name(status)} (the library gave no message)"
    raise error_for_status(status, message)
