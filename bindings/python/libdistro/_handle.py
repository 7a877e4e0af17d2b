"""The lifetime shared by every libdistro handle object: close(), context manager, finalizer."""

from __future__ import annotations

import threading
import weakref


class Handle:
    """Owns one C handle. Subclasses call ``_own(handle, destroy, *keep)`` once the C object exists;
    ``destroy(handle, *keep)`` runs exactly once, at close() or when the object is collected."""

    _handle = None

    def _own(self, handle, destroy, *keep) -> None:
        self._handle = handle
        self._lock = threading.RLock()
        self._finalizer = weakref.finalize(self, destroy, handle, *keep)

    def close(self) -> None:
        """Destroys the C object. Safe to call twice."""
        with self._lock:
            self._finalizer()
            self._handle = None

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _h(self):
        if self._handle is None:
            raise ValueError(f"this {type(self).__name__} is closed")
        return self._handle
