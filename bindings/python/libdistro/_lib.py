"""Loading libdistro's shared library and declaring its C API for ctypes.

Everything here mirrors ``capi/include/distro/distro.h`` (the contract): the version constants this
binding was written for, the status codes, the struct layouts, and a prototype (argtypes and restype)
for every exported function. The rest of the package talks to the library only through ``lib``.

Where the library is looked for, in order:

1. the environment variable ``LIBDISTRO_LIBRARY``: a full path. When it is set, it is the only place
   tried, so a test or a user pointing at a particular build never silently gets another one;
2. ``../../build/lib/libdistro.so.1`` relative to the folder holding this package (the in-tree build
   of ``cmake -S . -B build``);
3. ``ctypes.util.find_library("distro")`` (an installed library).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import (
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Mapping, Optional

# ------------------------------------------------------------------------------------------------
# Constants copied from distro.h: the header this binding was written for.
# ------------------------------------------------------------------------------------------------

DISTRO_VERSION_MAJOR = 0
DISTRO_VERSION_MINOR = 1
DISTRO_VERSION_PATCH = 0
DISTRO_VERSION_STRING = "0.1.0"
DISTRO_VERSION_NUMBER = DISTRO_VERSION_MAJOR * 1000000 + DISTRO_VERSION_MINOR * 1000 + DISTRO_VERSION_PATCH
DISTRO_ABI_VERSION = 1
DISTRO_WIRE_VERSION = 3

# enum distro_status (pinned values)
DISTRO_OK = 0
DISTRO_ERR_INVALID_ARGUMENT = 1
DISTRO_ERR_SIZE = 2
DISTRO_ERR_STATE = 3
DISTRO_ERR_NOT_FOUND = 4
DISTRO_ERR_UNSUPPORTED = 5
DISTRO_ERR_OUT_OF_MEMORY = 6
DISTRO_ERR_CORRUPT = 7
DISTRO_ERR_MISMATCH = 8
DISTRO_ERR_DEVICE = 9
DISTRO_ERR_IO = 10
DISTRO_ERR_NUMERIC = 11
DISTRO_ERR_INTERNAL = 12

# enum distro_device_kind
DISTRO_DEVICE_CPU = 0
DISTRO_DEVICE_CUDA = 1
DISTRO_DEVICE_VULKAN = 2

# distro_device_info.flags bits
DISTRO_DEVICE_FP16 = 1 << 0
DISTRO_DEVICE_BF16 = 1 << 1
DISTRO_DEVICE_INT64 = 1 << 2
DISTRO_DEVICE_OPTIMIZER = 1 << 3

# enum distro_value_mode
DISTRO_VALUES_SIGN = 1
DISTRO_VALUES_INT8 = 2

# enum distro_message_kind
DISTRO_MESSAGE_PAYLOAD = 1
DISTRO_MESSAGE_UPDATE = 2

# enum distro_optimizer_kind
DISTRO_OPTIMIZER_DISTRO = 1
DISTRO_OPTIMIZER_ADAMW = 2

# enum distro_net_state
DISTRO_NET_UNKNOWN = 0
DISTRO_NET_CREATED = 1
DISTRO_NET_WAITING = 2
DISTRO_NET_CONNECTING = 3
DISTRO_NET_SYNCING = 4
DISTRO_NET_TRAINING = 5
DISTRO_NET_PAUSED = 6
DISTRO_NET_FINISHING = 7
DISTRO_NET_LEAVING = 8
DISTRO_NET_STOPPING = 9
DISTRO_NET_COMPLETE = 10
DISTRO_NET_LEFT = 11
DISTRO_NET_STOPPED = 12
DISTRO_NET_FAILED = 13

# enum distro_net_event_kind
DISTRO_NET_EVENT_STEP_DONE = 1
DISTRO_NET_EVENT_JOINED = 2
DISTRO_NET_EVENT_LEFT = 3
DISTRO_NET_EVENT_ERROR = 4
DISTRO_NET_EVENT_LIMIT_HIT = 5
DISTRO_NET_EVENT_INFO = 6

DISTRO_FINGERPRINT_SIZE = 72

LIBRARY_ENV = "LIBDISTRO_LIBRARY"
IN_TREE_LIBRARY = Path("..") / ".." / "build" / "lib" / "libdistro.so.1"

# ------------------------------------------------------------------------------------------------
# Struct mirrors. new() gives the values of the header's _INIT macro, struct_size included.
# ------------------------------------------------------------------------------------------------


class _Struct(Structure):
    @classmethod
    def new(cls, **fields):
        s = cls()
        s.struct_size = ctypes.sizeof(cls)
        for key, value in fields.items():
            setattr(s, key, value)
        return s


class DeviceInfo(_Struct):
    """struct distro_device_info"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("name", c_char * 64),
        ("description", c_char * 192),
        ("kind", c_int),
        ("flags", c_uint32),
        ("memory_total", c_uint64),
        ("memory_free", c_uint64),
        ("compute_units", c_uint32),
        ("subgroup_size", c_uint32),
    ]


class OptimizerOptions(_Struct):
    """struct distro_optimizer_options"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("run_id", c_uint64),
        ("peer_id", c_uint32),
        ("chunk", c_uint32),
        ("topk", c_uint32),
        ("decay", c_float),
        ("value_mode", c_int),
        ("device", c_char_p),
        ("threads", c_uint32),
    ]

    @classmethod
    def new(cls, **fields):
        # DISTRO_OPTIMIZER_OPTIONS_INIT
        defaults = dict(chunk=64, topk=4, decay=0.999, value_mode=DISTRO_VALUES_SIGN)
        defaults.update(fields)
        return super().new(**defaults)


class OptimizerStats(_Struct):
    """struct distro_optimizer_stats"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("params", c_uint64),
        ("chunks", c_uint64),
        ("coefficients_sent", c_uint64),
        ("payload_bytes", c_uint64),
        ("payload_bits_per_param", c_double),
        ("update_bytes", c_uint64),
        ("update_bits_per_param", c_double),
    ]


class MessageInfo(_Struct):
    """struct distro_message_info"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("kind", c_int),
        ("version", c_int),
        ("value_mode", c_int),
        ("run_id", c_uint64),
        ("step", c_uint64),
        ("peer_id", c_uint32),
        ("manifest_hash", c_uint64),
        ("prev_hash", c_uint64),
        ("lr", c_float),
        ("decay_factor", c_float),
    ]


class TrainerOptions(_Struct):
    """struct distro_trainer_options"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("preset", c_char_p),
        ("vocab", c_int),
        ("data", c_char_p),
        ("devices", c_char_p),
        ("peers", c_uint32),
        ("optimizer", c_int),
        ("steps", c_uint64),
        ("batch", c_uint32),
        ("micro_batch", c_uint32),
        ("seq", c_uint32),
        ("lr", c_float),
        ("warmup", c_uint64),
        ("min_lr_ratio", c_float),
        ("weight_decay", c_float),
        ("clip", c_float),
        ("chunk", c_uint32),
        ("topk", c_uint32),
        ("decay", c_float),
        ("value_mode", c_int),
        ("seed", c_uint64),
        ("threads", c_uint32),
        ("eval_batches", c_uint64),
    ]

    # DISTRO_TRAINER_OPTIONS_INIT (less struct_size and the NULL strings)
    DEFAULTS = dict(
        vocab=0, peers=4, optimizer=DISTRO_OPTIMIZER_DISTRO, steps=200, batch=8, micro_batch=0, seq=128,
        lr=0.0, warmup=0, min_lr_ratio=0.1, weight_decay=0.0, clip=1.0, chunk=64, topk=4, decay=0.999,
        value_mode=DISTRO_VALUES_SIGN, seed=1, threads=0, eval_batches=8,
    )

    @classmethod
    def new(cls, **fields):
        defaults = dict(cls.DEFAULTS)
        defaults.update(fields)
        return super().new(**defaults)


class StepStats(_Struct):
    """struct distro_step_stats"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("step", c_uint64),
        ("lr", c_float),
        ("train_loss", c_double),
        ("grad_norm", c_double),
        ("tokens", c_uint64),
        ("bytes_up_per_peer", c_uint64),
        ("bytes_down_per_peer", c_uint64),
        ("seconds", c_double),
        ("replica_hash", c_uint64),
    ]


class TrainerInfo(_Struct):
    """struct distro_trainer_info"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("params", c_uint64),
        ("peers", c_uint32),
        ("steps_done", c_uint64),
        ("steps_total", c_uint64),
        ("allreduce_bytes_per_peer", c_uint64),
    ]


class NodeTotals(_Struct):
    """struct distro_node_totals"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("node", c_char * 128),
        ("rounds", c_uint64),
        ("tokens", c_uint64),
        ("bytes_up", c_uint64),
        ("bytes_down", c_uint64),
        ("rejected", c_uint64),
        ("first_ms", c_int64),
        ("last_ms", c_int64),
    ]


class Contribution(_Struct):
    """struct distro_contribution"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("node", c_char * 128),
        ("step", c_uint64),
        ("bytes_up", c_uint64),
        ("bytes_down", c_uint64),
        ("tokens", c_uint64),
        ("accepted", c_int),
        ("reason", c_char * 256),
        ("unix_ms", c_int64),
    ]


class NetEvent(Structure):
    """struct distro_net_event (filled by the library; no _INIT macro)"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("kind", c_int),
        ("step", c_uint64),
        ("node", c_char_p),
        ("message", c_char_p),
    ]


# void (*distro_net_event_fn)(const distro_net_event *event, void *user_data)
NetEventFn = ctypes.CFUNCTYPE(None, POINTER(NetEvent), c_void_p)


class CoordinatorOptions(_Struct):
    """struct distro_coordinator_options"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("config_path", c_char_p),
        ("config_json", c_char_p),
        ("listen", c_char_p),
        ("state_dir", c_char_p),
        ("steps", c_uint64),
    ]


class CoordinatorStatus(_Struct):
    """struct distro_coordinator_status"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("state", c_int),
        ("state_name", c_char * 32),
        ("step", c_uint64),
        ("total_steps", c_uint64),
        ("rounds_done", c_uint64),
        ("nodes_connected", c_uint32),
        ("nodes_in_sync", c_uint32),
        ("bytes_up", c_uint64),
        ("bytes_down", c_uint64),
        ("last_round_seconds", c_double),
        ("param_hash", c_uint64),
    ]


class NodeOptions(_Struct):
    """struct distro_node_options"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("coordinator", c_char_p),
        ("token", c_char_p),
        ("device", c_char_p),
        ("pin", c_char_p),
        ("up_limit", c_double),
        ("down_limit", c_double),
        ("history", c_char_p),
        ("threads", c_uint32),
        ("retry_min_s", c_double),
        ("retry_max_s", c_double),
        ("agent", c_char_p),
    ]

    # DISTRO_NODE_OPTIONS_INIT (less struct_size and the NULL strings)
    DEFAULTS = dict(up_limit=0.0, down_limit=0.0, threads=0, retry_min_s=0.5, retry_max_s=30.0)

    @classmethod
    def new(cls, **fields):
        defaults = dict(cls.DEFAULTS)
        defaults.update(fields)
        return super().new(**defaults)


class NodeStatus(_Struct):
    """struct distro_node_status"""

    _fields_ = [
        ("struct_size", c_size_t),
        ("state", c_int),
        ("state_name", c_char * 32),
        ("node_name", c_char * 128),
        ("node_id", c_uint32),
        ("step", c_uint64),
        ("total_steps", c_uint64),
        ("param_hash", c_uint64),
        ("rounds_trained", c_uint64),
        ("rounds_accepted", c_uint64),
        ("bytes_up", c_uint64),
        ("bytes_down", c_uint64),
        ("last_loss", c_double),
        ("last_train_seconds", c_double),
        ("reconnects", c_uint32),
        ("coordinator_fingerprint", c_char * DISTRO_FINGERPRINT_SIZE),
        ("error", c_char * 256),
    ]


# Opaque handles: distinct pointer types, so one kind of handle cannot be passed for another.
class Devices(Structure):
    """struct distro_devices (opaque)"""


class OptimizerHandle(Structure):
    """struct distro_optimizer (opaque)"""


class MergerHandle(Structure):
    """struct distro_merger (opaque)"""


class TrainerHandle(Structure):
    """struct distro_trainer (opaque)"""


class HistoryHandle(Structure):
    """struct distro_history (opaque)"""


DevicesPtr = POINTER(Devices)
OptimizerPtr = POINTER(OptimizerHandle)
MergerPtr = POINTER(MergerHandle)
TrainerPtr = POINTER(TrainerHandle)
class CoordinatorHandle(Structure):
    """struct distro_coordinator (opaque)"""


class NodeHandle(Structure):
    """struct distro_node (opaque)"""


HistoryPtr = POINTER(HistoryHandle)
CoordinatorPtr = POINTER(CoordinatorHandle)
NodePtr = POINTER(NodeHandle)
BytesPtr = POINTER(c_uint8)

# ------------------------------------------------------------------------------------------------
# Prototypes: (name, restype, argtypes) for every function in distro.h, in the header's order.
# ------------------------------------------------------------------------------------------------

PROTOTYPES = [
    # Versions
    ("distro_version", c_char_p, []),
    ("distro_version_number", c_int, []),
    ("distro_abi_version", c_int, []),
    # Status codes and errors
    ("distro_status_name", c_char_p, [c_int]),
    ("distro_last_error", c_char_p, []),
    ("distro_free", None, [c_void_p]),
    # Devices
    ("distro_devices_scan", c_int, [POINTER(DevicesPtr)]),
    ("distro_devices_destroy", ctypes.c_int, [DevicesPtr]),
    ("distro_devices_count", c_int, [POINTER(c_size_t), DevicesPtr]),
    ("distro_devices_get", c_int, [POINTER(DeviceInfo), DevicesPtr, c_size_t]),
    # The optimizer
    ("distro_optimizer_create", c_int, [POINTER(OptimizerPtr), POINTER(OptimizerOptions)]),
    ("distro_optimizer_destroy", ctypes.c_int, [OptimizerPtr]),
    (
        "distro_optimizer_add_tensor",
        c_int,
        [OptimizerPtr, c_char_p, POINTER(ctypes.c_int64), c_size_t, POINTER(c_float), POINTER(c_float)],
    ),
    ("distro_optimizer_compress", c_int, [POINTER(BytesPtr), POINTER(c_size_t), OptimizerPtr, c_uint64, c_float]),
    ("distro_optimizer_apply", c_int, [POINTER(c_uint64), OptimizerPtr, BytesPtr, c_size_t]),
    ("distro_optimizer_param_hash", c_int, [POINTER(c_uint64), OptimizerPtr]),
    ("distro_optimizer_manifest_hash", c_int, [POINTER(c_uint64), OptimizerPtr]),
    ("distro_optimizer_get_stats", c_int, [POINTER(OptimizerStats), OptimizerPtr]),
    # Merging
    ("distro_merger_create", c_int, [POINTER(MergerPtr), OptimizerPtr, c_uint64]),
    ("distro_merger_destroy", ctypes.c_int, [MergerPtr]),
    ("distro_merger_add", c_int, [MergerPtr, BytesPtr, c_size_t]),
    ("distro_merger_count", c_int, [POINTER(c_size_t), MergerPtr]),
    (
        "distro_merger_finish",
        c_int,
        [POINTER(BytesPtr), POINTER(c_size_t), MergerPtr, c_float, c_float, c_uint64],
    ),
    # Inspecting wire bytes
    ("distro_message_inspect", c_int, [POINTER(MessageInfo), BytesPtr, c_size_t]),
    # Local training of the built-in model
    ("distro_trainer_create", c_int, [POINTER(TrainerPtr), POINTER(TrainerOptions)]),
    ("distro_trainer_resume", c_int, [POINTER(TrainerPtr), c_char_p]),
    ("distro_trainer_destroy", c_int, [TrainerPtr]),
    ("distro_trainer_step", c_int, [POINTER(StepStats), TrainerPtr]),
    ("distro_trainer_evaluate", c_int, [POINTER(c_double), TrainerPtr]),
    ("distro_trainer_save", c_int, [TrainerPtr, c_char_p]),
    ("distro_trainer_get_info", c_int, [POINTER(TrainerInfo), TrainerPtr]),
    ("distro_trainer_set_total_steps", c_int, [TrainerPtr, c_uint64]),
    # Contribution history
    ("distro_history_open", c_int, [POINTER(HistoryPtr), c_char_p]),
    ("distro_history_destroy", c_int, [HistoryPtr]),
    ("distro_history_last_round", c_int, [POINTER(c_uint64), HistoryPtr]),
    ("distro_history_query_totals", c_int, [POINTER(c_size_t), HistoryPtr]),
    ("distro_history_get_totals", c_int, [POINTER(NodeTotals), HistoryPtr, c_size_t]),
    ("distro_history_query_contributions", c_int, [POINTER(c_size_t), HistoryPtr, c_char_p, c_uint64]),
    ("distro_history_get_contribution", c_int, [POINTER(Contribution), HistoryPtr, c_size_t]),
    # Network: coordinator and node
    ("distro_coordinator_create", c_int, [POINTER(CoordinatorPtr), POINTER(CoordinatorOptions)]),
    ("distro_coordinator_destroy", c_int, [CoordinatorPtr]),
    ("distro_coordinator_set_event_callback", c_int, [CoordinatorPtr, NetEventFn, c_void_p]),
    ("distro_coordinator_start", c_int, [CoordinatorPtr]),
    ("distro_coordinator_pause", c_int, [CoordinatorPtr]),
    ("distro_coordinator_resume", c_int, [CoordinatorPtr]),
    ("distro_coordinator_finish", c_int, [CoordinatorPtr]),
    ("distro_coordinator_stop", c_int, [CoordinatorPtr]),
    ("distro_coordinator_wait", c_int, [POINTER(c_int), CoordinatorPtr, c_uint32]),
    ("distro_coordinator_set_limits", c_int, [CoordinatorPtr, c_double, c_double]),
    ("distro_coordinator_port", c_int, [POINTER(ctypes.c_uint16), CoordinatorPtr]),
    ("distro_coordinator_fingerprint", c_int, [ctypes.c_char_p, c_size_t, CoordinatorPtr]),
    ("distro_coordinator_get_status", c_int, [POINTER(CoordinatorStatus), CoordinatorPtr]),
    ("distro_node_create", c_int, [POINTER(NodePtr), POINTER(NodeOptions)]),
    ("distro_node_destroy", c_int, [NodePtr]),
    ("distro_node_set_event_callback", c_int, [NodePtr, NetEventFn, c_void_p]),
    ("distro_node_start", c_int, [NodePtr]),
    ("distro_node_pause", c_int, [NodePtr]),
    ("distro_node_resume", c_int, [NodePtr]),
    ("distro_node_finish", c_int, [NodePtr]),
    ("distro_node_stop", c_int, [NodePtr]),
    ("distro_node_wait", c_int, [POINTER(c_int), NodePtr, c_uint32]),
    ("distro_node_set_limits", c_int, [NodePtr, c_double, c_double]),
    ("distro_node_get_status", c_int, [POINTER(NodeStatus), NodePtr]),
]

# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def _candidates(environ: Optional[Mapping[str, str]] = None) -> list[tuple[str, str]]:
    """The places to look for the library, in order, as (how it was found, path or name)."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(LIBRARY_ENV)
    if explicit:
        return [(f"${LIBRARY_ENV}", explicit)]
    out = [("in-tree build", str((Path(__file__).resolve().parent.parent / IN_TREE_LIBRARY).resolve()))]
    found = ctypes.util.find_library("distro")
    out.append(("ctypes.util.find_library('distro')", found or ""))
    return out


def _open(candidates: list[tuple[str, str]]) -> tuple[ctypes.CDLL, str]:
    """Opens the first candidate that loads; ImportError listing every place tried otherwise."""
    tried = []
    for label, path in candidates:
        if not path:
            tried.append(f"  {label}: nothing found")
            continue
        if os.sep in path and not os.path.exists(path):
            tried.append(f"  {label}: {path} (no such file)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append(f"  {label}: {path} ({e})")
    raise ImportError(
        "libdistro: cannot load the shared library libdistro.so.1. Places tried:\n"
        + "\n".join(tried)
        + f"\nBuild it (cmake -S . -B build && cmake --build build --target distro) or set {LIBRARY_ENV} "
        "to the full path of libdistro.so.1."
    )


def _declare(lib: ctypes.CDLL, path: str = "") -> None:
    """Sets argtypes and restype of every function; ImportError if the library lacks one."""
    missing = []
    for name, restype, argtypes in PROTOTYPES:
        try:
            fn = getattr(lib, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    if missing:
        raise ImportError(f"libdistro: the library {path or lib._name} lacks the functions: {', '.join(missing)}")


def _check_versions(lib: ctypes.CDLL, expected_abi: Optional[int] = None, expected_major: Optional[int] = None,
                    path: str = "") -> None:
    """ImportError unless the library's ABI version equals the one this binding was written for and its
    major version matches. The defaults are this module's constants, read at call time."""
    expected_abi = DISTRO_ABI_VERSION if expected_abi is None else expected_abi
    expected_major = DISTRO_VERSION_MAJOR if expected_major is None else expected_major
    where = path or getattr(lib, "_name", "?")
    abi = lib.distro_abi_version()
    version = lib.distro_version().decode("ascii", "replace")
    if abi != expected_abi:
        raise ImportError(
            f"libdistro: ABI version mismatch: the library {where} (version {version}) has ABI version {abi}, "
            f"but this Python binding was written for ABI version {expected_abi}; use a matching library "
            f"or binding"
        )
    number = lib.distro_version_number()
    major = number // 1000000
    if major != expected_major:
        raise ImportError(
            f"libdistro: major version mismatch: the library {where} is version {version} "
            f"(number {number}, major {major}), but this Python binding was written for major version "
            f"{expected_major}"
        )


def load(environ: Optional[Mapping[str, str]] = None) -> tuple[ctypes.CDLL, str]:
    """Finds, opens, declares and checks the library. Returns (library, path it was loaded from)."""
    library, path = _open(_candidates(environ))
    _declare(library, path)
    _check_versions(library, path=path)
    return library, path


lib, library_path = load()


def library_version() -> str:
    """The loaded library's version string, e.g. "0.1.0"."""
    return lib.distro_version().decode("ascii", "replace")


def last_error() -> str:
    """The message of the last failed libdistro call on this thread."""
    return lib.distro_last_error().decode("utf-8", "replace")


def status_name(status: int) -> str:
    return lib.distro_status_name(status).decode("ascii", "replace")


def as_bytes_pointer(data) -> tuple[object, ctypes._Pointer, int]:
    """A const uint8_t* over bytes-like data without passing NULL (an empty buffer still has an
    address). Returns (object to keep alive during the call, pointer, size)."""
    if isinstance(data, bytes):
        buf = data
    elif isinstance(data, (bytearray, memoryview)):
        buf = bytes(data)
    else:
        raise TypeError(f"expected bytes, bytearray or memoryview, got {type(data).__name__}")
    ptr = ctypes.cast(c_char_p(buf), BytesPtr)
    return buf, ptr, len(buf)


def take_bytes(ptr: ctypes._Pointer, size: int) -> bytes:
    """Copies memory the library returned into Python bytes and frees it with distro_free."""
    if not ptr:
        return b""
    try:
        return ctypes.string_at(ptr, size) if size else b""
    finally:
        lib.distro_free(ptr)
