"""A network run: the coordinator that owns it and the contributor nodes that join it
(distro_coordinator, distro_node; docs/network.md).

    events = []
    with libdistro.Coordinator("run.json", listen="127.0.0.1:0", on_event=events.append) as c:
        c.start()
        with libdistro.Node(f"127.0.0.1:{c.port}", token, pin=c.fingerprint) as n:
            n.start()
            n.wait()                      # until the run completes, the node leaves or fails
        c.wait()
        print(c.status().step, n.status().param_hash, [e.kind for e in events])

Both run on the library's own threads once started. ``on_event`` is called on that io thread with an
:class:`Event`, one at a time: keep it short, and do not close (or wait for) the object from inside it
(the library refuses that with StateError). An exception raised by ``on_event`` is caught and kept in
``callback_errors``; it never reaches the library.
"""

from __future__ import annotations

import json
import threading
import time
from ctypes import byref, c_int, c_uint16, create_string_buffer
from dataclasses import dataclass
from typing import Callable, Optional

from . import _lib
from ._handle import Handle
from .errors import check
from .optimizer import _c_string, _float, _uint
from .trainer import _path

__all__ = ["Coordinator", "Node", "Event", "CoordinatorStatus", "NodeStatus"]

_EVENT_KINDS = {
    _lib.DISTRO_NET_EVENT_STEP_DONE: "step_done",
    _lib.DISTRO_NET_EVENT_JOINED: "joined",
    _lib.DISTRO_NET_EVENT_LEFT: "left",
    _lib.DISTRO_NET_EVENT_ERROR: "error",
    _lib.DISTRO_NET_EVENT_LIMIT_HIT: "limit_hit",
    _lib.DISTRO_NET_EVENT_INFO: "info",
}

# One C wait call lasts at most this long, so that Ctrl-C reaches Python between slices.
_WAIT_SLICE_MS = 200


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


@dataclass(frozen=True)
class Event:
    """One event of a coordinator or node (distro_net_event)."""

    kind: str  # "step_done", "joined", "left", "error", "limit_hit", "info"
    step: int
    node: str  # the node's name, "" when about no node
    message: str


@dataclass(frozen=True)
class CoordinatorStatus:
    """distro_coordinator_status; state is the state's name ("waiting", "training", "complete", ...)."""

    state: str
    step: int
    total_steps: int
    rounds_done: int
    nodes_connected: int
    nodes_in_sync: int
    bytes_up: int
    bytes_down: int
    last_round_seconds: float
    param_hash: int


@dataclass(frozen=True)
class NodeStatus:
    """distro_node_status; state is the state's name ("connecting", "training", "complete", "failed", ...)."""

    state: str
    node_name: str
    node_id: int
    step: int
    total_steps: int
    param_hash: int
    rounds_trained: int
    rounds_accepted: int
    bytes_up: int
    bytes_down: int
    last_loss: float
    last_train_seconds: float
    reconnects: int
    coordinator_fingerprint: str
    error: str


class _NetObject(Handle):
    """What Coordinator and Node share: the callback, start/stop/wait and the controls."""

    _prefix = ""

    def _fn(self, name):
        return getattr(_lib.lib, f"distro_{self._prefix}_{name}")

    def _setup(self, handle, destroy, on_event: Optional[Callable[[Event], None]]) -> None:
        self.callback_errors: list[BaseException] = []
        trampoline = None
        if on_event is not None:
            if not callable(on_event):
                raise TypeError(f"on_event must be callable, got {type(on_event).__name__}")
            errors = self.callback_errors

            def deliver(event_ptr, _user):
                try:
                    e = event_ptr.contents
                    on_event(Event(_EVENT_KINDS.get(e.kind, f"unknown({e.kind})"), e.step,
                                   _text(e.node or b""), _text(e.message or b"")))
                except BaseException as exc:  # never into the library's thread
                    errors.append(exc)

            trampoline = _lib.NetEventFn(deliver)
        # The trampoline rides with the finalizer, so it lives as long as the C handle may call it.
        self._own(handle, destroy, trampoline)
        self._waiters = 0
        self._wait_cv = threading.Condition()
        if trampoline is not None:
            check(self._fn("set_event_callback")(handle, trampoline, None))

    def start(self) -> None:
        """Starts it on its own threads (a coordinator binds its address first)."""
        with self._lock:
            check(self._fn("start")(self._h()))

    def pause(self) -> None:
        with self._lock:
            check(self._fn("pause")(self._h()))

    def resume(self) -> None:
        with self._lock:
            check(self._fn("resume")(self._h()))

    def finish(self) -> None:
        """Ends after the open round (coordinator) / after its round, then leaves (node)."""
        with self._lock:
            check(self._fn("finish")(self._h()))

    def stop(self) -> None:
        """Stops now."""
        with self._lock:
            check(self._fn("stop")(self._h()))

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until it has ended (True) or ``timeout`` seconds passed (False); None = no limit.
        Another thread may call stop() or close() meanwhile."""
        end = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        done = c_int(0)
        fn = self._fn("wait")
        with self._wait_cv:
            handle = self._h()
            self._waiters += 1
        try:
            while True:
                left_ms = _WAIT_SLICE_MS if end is None else int(max(0.0, end - time.monotonic()) * 1000)
                # No lock here: a wait may overlap the other calls (distro.h); close() waits for us
                # before it destroys the handle.
                check(fn(byref(done), handle, min(left_ms, _WAIT_SLICE_MS)))
                if done.value:
                    return True
                if end is not None and time.monotonic() >= end:
                    return False
        finally:
            with self._wait_cv:
                self._waiters -= 1
                self._wait_cv.notify_all()

    def close(self) -> None:
        """Stops it, waits for it to end and destroys it (may take a few seconds while connections
        close). Safe to call twice. Not from inside on_event."""
        with self._lock, self._wait_cv:
            handle, self._handle = self._handle, None
        if handle is None:
            return
        # The handle is no longer reachable by new calls; stop it so that running waits return,
        # then destroy it without holding our lock (a callback may still be asking for status).
        self._fn("stop")(handle)
        with self._wait_cv:
            while self._waiters:
                self._wait_cv.wait()
        self._finalizer()

    def set_limits(self, up: float, down: float) -> None:
        """Rate caps in bytes/s, live (0 = unlimited)."""
        with self._lock:
            check(self._fn("set_limits")(self._h(), _float(up, "up"), _float(down, "down")))


def _destroy_coordinator(handle, trampoline) -> None:
    _lib.lib.distro_coordinator_destroy(handle)


def _destroy_node(handle, trampoline) -> None:
    _lib.lib.distro_node_destroy(handle)


class Coordinator(_NetObject):
    """The coordinator of one run (distro_coordinator).

    ``config``: a run configuration file (path), or a dict of its keys (sent as JSON text; relative
    paths are then relative to the working directory). ``listen``, ``state_dir`` and ``steps``
    override the configuration's. InvalidArgument names a bad key; NotFound a missing file;
    MismatchError a state folder holding another run.
    """

    _prefix = "coordinator"

    def __init__(self, config, *, listen: Optional[str] = None, state_dir=None, steps: int = 0,
                 on_event: Optional[Callable[[Event], None]] = None):
        options = _lib.CoordinatorOptions.new(steps=_uint(steps, 64, "steps"))
        if isinstance(config, dict):
            options.config_json = json.dumps(config).encode("utf-8")
        else:
            options.config_path = _path(config, "config")
        if listen is not None:
            options.listen = _c_string(listen, "listen")
        if state_dir is not None:
            options.state_dir = _path(state_dir, "state_dir")
        handle = _lib.CoordinatorPtr()
        check(_lib.lib.distro_coordinator_create(byref(handle), byref(options)))
        self._setup(handle, _destroy_coordinator, on_event)

    def __repr__(self) -> str:
        return "<libdistro.Coordinator closed>" if self.closed else f"<libdistro.Coordinator {self.status().state}>"

    @property
    def port(self) -> int:
        """The port it listens on (after start)."""
        out = c_uint16()
        with self._lock:
            check(_lib.lib.distro_coordinator_port(byref(out), self._h()))
        return out.value

    @property
    def fingerprint(self) -> str:
        """Its TLS certificate's fingerprint, "sha256:..." (for the nodes' ``pin``)."""
        buf = create_string_buffer(_lib.DISTRO_FINGERPRINT_SIZE)
        with self._lock:
            check(_lib.lib.distro_coordinator_fingerprint(buf, len(buf), self._h()))
        return _text(buf.value)

    def status(self) -> CoordinatorStatus:
        s = _lib.CoordinatorStatus.new()
        with self._lock:
            check(_lib.lib.distro_coordinator_get_status(byref(s), self._h()))
        return CoordinatorStatus(_text(s.state_name), s.step, s.total_steps, s.rounds_done, s.nodes_connected,
                                 s.nodes_in_sync, s.bytes_up, s.bytes_down, s.last_round_seconds, s.param_hash)


class Node(_NetObject):
    """A contributor node (distro_node): joins ``coordinator`` ("host:port") with ``token``.

    ``pin``: "sha256:<64 hex>" to require that certificate (None = accept any); ``up_limit`` and
    ``down_limit`` in bytes/s (0 = unlimited); ``history``: a local ledger file of its contributions.
    Network failures after :meth:`start` show in events and :meth:`status`, not as exceptions.
    """

    _prefix = "node"

    def __init__(self, coordinator: str, token: str, *, device: str = "cpu", pin: Optional[str] = None,
                 up_limit: float = 0.0, down_limit: float = 0.0, history=None, threads: int = 0,
                 retry_min_s: float = 0.5, retry_max_s: float = 30.0, agent: Optional[str] = None,
                 on_event: Optional[Callable[[Event], None]] = None):
        options = _lib.NodeOptions.new(
            coordinator=_c_string(coordinator, "coordinator"),
            token=_c_string(token, "token"),
            device=_c_string(device, "device"),
            up_limit=_float(up_limit, "up_limit"),
            down_limit=_float(down_limit, "down_limit"),
            threads=_uint(threads, 32, "threads"),
            retry_min_s=_float(retry_min_s, "retry_min_s"),
            retry_max_s=_float(retry_max_s, "retry_max_s"),
        )
        if pin is not None:
            options.pin = _c_string(pin, "pin")
        if history is not None:
            options.history = _path(history, "history")
        if agent is not None:
            options.agent = _c_string(agent, "agent")
        handle = _lib.NodePtr()
        check(_lib.lib.distro_node_create(byref(handle), byref(options)))
        self._setup(handle, _destroy_node, on_event)

    def __repr__(self) -> str:
        return "<libdistro.Node closed>" if self.closed else f"<libdistro.Node {self.status().state}>"

    def status(self) -> NodeStatus:
        s = _lib.NodeStatus.new()
        with self._lock:
            check(_lib.lib.distro_node_get_status(byref(s), self._h()))
        return NodeStatus(_text(s.state_name), _text(s.node_name), s.node_id, s.step, s.total_steps, s.param_hash,
                          s.rounds_trained, s.rounds_accepted, s.bytes_up, s.bytes_down, s.last_loss,
                          s.last_train_seconds, s.reconnects, _text(s.coordinator_fingerprint), _text(s.error))
