"""libdistro: the DisTrO optimizer as a library, for Python (ctypes + numpy).

    import numpy as np
    import libdistro

    print(libdistro.devices())
    with libdistro.Optimizer(run_id=1, peer_id=0) as opt:
        opt.add_tensor("w", w, w_grad)        # float32 arrays, used in place
        payload = opt.compress(step, lr)      # send to the others
        ...
        opt.apply(update)                     # from a Merger of all peers' payloads

    with libdistro.Trainer("corpus.txt", peers=2, steps=100) as t:   # the built-in model, N local peers
        stats = [t.step() for _ in range(100)]

    with libdistro.History("run.ledger") as h:    # a coordinator's contribution ledger, read-only
        print(h.totals(), h.contributions("alice", limit=10), h.last_round())

    with libdistro.Coordinator("run.json", listen="127.0.0.1:0") as c:   # a network run (docs/network.md)
        c.start()
        with libdistro.Node(f"127.0.0.1:{c.port}", token, pin=c.fingerprint, on_event=print) as n:
            n.start(); n.wait()

The shared library is found through $LIBDISTRO_LIBRARY, the in-tree build, or the system (see _lib).
"""

from ._lib import (
    DISTRO_ABI_VERSION,
    DISTRO_VERSION_NUMBER,
    DISTRO_VERSION_STRING,
    DISTRO_WIRE_VERSION,
    library_version,
)
from ._lib import library_path as _library_path
from .devices import Device, devices
from .errors import (
    CorruptError,
    DeviceError,
    DistroError,
    DistroIOError,
    InternalError,
    InvalidArgument,
    MismatchError,
    NotFound,
    NumericError,
    OutOfMemory,
    SizeError,
    StateError,
    Unsupported,
)
from .history import Contribution, History, NodeTotals
from .network import Coordinator, CoordinatorStatus, Event, Node, NodeStatus
from .optimizer import Merger, Optimizer, inspect
from .trainer import Trainer

# The binding's own version: that of the header it was written for.
__version__ = DISTRO_VERSION_STRING


def library_path() -> str:
    """Where the loaded shared library was found."""
    return _library_path


__all__ = [
    "__version__",
    "DISTRO_ABI_VERSION",
    "DISTRO_VERSION_NUMBER",
    "DISTRO_VERSION_STRING",
    "DISTRO_WIRE_VERSION",
    "library_version",
    "library_path",
    "Device",
    "devices",
    "Optimizer",
    "Merger",
    "inspect",
    "Trainer",
    "History",
    "NodeTotals",
    "Contribution",
    "Coordinator",
    "Node",
    "Event",
    "CoordinatorStatus",
    "NodeStatus",
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
]
