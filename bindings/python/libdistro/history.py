"""The contribution history: the SQLite ledger a coordinator keeps of every round and of each node's
contribution to it (distro_history).

    with libdistro.History("run.ledger") as h:      # opened read-only; the coordinator may keep writing
        print(h.last_round())
        for t in h.totals():                          # one NodeTotals per node, sorted by name
            print(t.node, t.rounds, t.tokens, t.bytes_up, t.bytes_down)
        for c in h.contributions("alice", limit=10):  # newest first
            print(c.step, c.accepted, c.reason)

Each call is one query, so it sees whole rounds only, even while the ledger is being written.
"""

from __future__ import annotations

from ctypes import byref, c_size_t, c_uint64
from dataclasses import dataclass

from . import _lib
from ._handle import Handle
from .errors import check
from .optimizer import _c_string, _uint
from .trainer import _path

__all__ = ["History", "NodeTotals", "Contribution"]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


@dataclass(frozen=True)
class NodeTotals:
    """One node's totals over the whole ledger (distro_node_totals)."""

    node: str
    rounds: int  # rounds with an accepted contribution
    tokens: int  # tokens trained in its accepted contributions
    bytes_up: int  # sent, over all its contributions (refused ones too)
    bytes_down: int  # received, over all its contributions
    rejected: int  # contributions refused
    first_ms: int  # its first and last contribution, ms since 1970-01-01 UTC
    last_ms: int


@dataclass(frozen=True)
class Contribution:
    """One node's contribution to one round (distro_contribution)."""

    node: str
    step: int
    bytes_up: int  # its payload on the wire
    bytes_down: int  # the merged update it received
    tokens: int
    accepted: bool  # merged into the round's update; False: refused, see reason
    reason: str  # why it was refused, "" when accepted
    unix_ms: int  # when it was recorded, ms since 1970-01-01 UTC


def _destroy_history(handle) -> None:
    _lib.lib.distro_history_destroy(handle)


class History(Handle):
    """A ledger file opened read-only (nothing is ever written to it).

    NotFound if there is no such file; CorruptError if it is not a SQLite file, is empty or is
    damaged; MismatchError if it is another application's database or a ledger written by a newer
    libdistro; DistroIOError if it cannot be read. Messages name the file.

    Use it as a context manager, or call :meth:`close`. Calls on one History are serialised by a lock.
    """

    def __init__(self, path):
        path_b = _path(path, "path")
        handle = _lib.HistoryPtr()
        check(_lib.lib.distro_history_open(byref(handle), path_b))
        self._own(handle, _destroy_history)

    def __repr__(self) -> str:
        return "<libdistro.History closed>" if self.closed else f"<libdistro.History last_round={self.last_round()}>"

    def last_round(self) -> int:
        """The highest committed round (step); 0 for a ledger with none."""
        out = c_uint64()
        with self._lock:
            check(_lib.lib.distro_history_last_round(byref(out), self._h()))
        return out.value

    def totals(self) -> list[NodeTotals]:
        """Per-node totals, sorted by node name (bytewise)."""
        count = c_size_t()
        out = []
        with self._lock:
            h = self._h()
            check(_lib.lib.distro_history_query_totals(byref(count), h))
            for i in range(count.value):
                t = _lib.NodeTotals.new()
                check(_lib.lib.distro_history_get_totals(byref(t), h, i))
                out.append(NodeTotals(_text(t.node), t.rounds, t.tokens, t.bytes_up, t.bytes_down, t.rejected,
                                      t.first_ms, t.last_ms))
        return out

    def contributions(self, node: str | None = None, limit: int = 0) -> list[Contribution]:
        """Contributions newest first (by step, then node name): one node's, or every node's when
        ``node`` is None. ``limit``: at most this many, 0 for all."""
        node_b = None if node is None else _c_string(node, "node")
        count = c_size_t()
        out = []
        with self._lock:
            h = self._h()
            check(_lib.lib.distro_history_query_contributions(byref(count), h, node_b, _uint(limit, 64, "limit")))
            for i in range(count.value):
                c = _lib.Contribution.new()
                check(_lib.lib.distro_history_get_contribution(byref(c), h, i))
                out.append(Contribution(_text(c.node), c.step, c.bytes_up, c.bytes_down, c.tokens, bool(c.accepted),
                                        _text(c.reason), c.unix_ms))
        return out
