"""The DisTrO optimizer, the merger of peers' payloads, and inspection of wire bytes.

One :class:`Optimizer` is one peer's optimizer state for one model. Register every trainable tensor
(same order, names, shapes and options on every peer of a run), then per step: write the gradients
into the registered gradient arrays in place, :meth:`Optimizer.compress` into this peer's payload,
merge all peers' payloads with a :class:`Merger`, and :meth:`Optimizer.apply` the merged update on
every peer; the registered parameter arrays are updated in place, bit-identically on every replica.
"""

from __future__ import annotations

import numbers
import operator
from ctypes import POINTER, byref, c_float, c_int64, c_size_t, c_uint64

import numpy as np

from . import _lib
from ._handle import Handle
from .devices import Device
from .errors import check

__all__ = ["Optimizer", "Merger", "inspect"]

_VALUE_MODES = {"sign": _lib.DISTRO_VALUES_SIGN, "int8": _lib.DISTRO_VALUES_INT8}
_VALUE_NAMES = {v: k for k, v in _VALUE_MODES.items()}
_MESSAGE_KINDS = {_lib.DISTRO_MESSAGE_PAYLOAD: "payload", _lib.DISTRO_MESSAGE_UPDATE: "update"}

_UINT_MAX = {32: (1 << 32) - 1, 64: (1 << 64) - 1}


def _uint(value, bits: int, what: str) -> int:
    """An integer that fits the C field unchanged (ctypes would wrap -1 to 2^64-1 silently)."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}") from None
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got bool")
    if not 0 <= v <= _UINT_MAX[bits]:
        raise ValueError(f"{what} is {v}; expected an integer in 0..2^{bits}-1")
    return v


def _float(value, what: str) -> float:
    """A real number for a C float; range and finiteness are the library's to judge."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}")
    return float(value)


def _c_string(value: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    b = value.encode("utf-8")
    if b"\0" in b:
        raise ValueError(f"{what} {value!r} contains a NUL character")
    return b


def _check_array(a, what: str, tensor: str, writable: bool) -> None:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} of tensor '{tensor}' must be a numpy.ndarray of float32, got {type(a).__name__}")
    if a.dtype != np.dtype(np.float32):
        raise TypeError(
            f"{what} of tensor '{tensor}' has dtype {a.dtype}; expected float32 (native byte order), e.g. "
            f"np.ascontiguousarray(x, dtype=np.float32)"
        )
    if not a.flags.c_contiguous:
        raise ValueError(
            f"{what} of tensor '{tensor}' is not C-contiguous; expected one C-contiguous block "
            f"(np.ascontiguousarray makes a copy, which must then be the array you keep using)"
        )
    if not a.flags.aligned:
        raise ValueError(f"{what} of tensor '{tensor}' is not aligned for float32")
    if writable and not a.flags.writeable:
        raise ValueError(f"{what} of tensor '{tensor}' is read-only; the optimizer writes the parameters in place")


def _destroy_optimizer(handle, tensors) -> None:
    # `tensors` rides along only to keep the registered arrays alive until the handle is gone.
    _lib.lib.distro_optimizer_destroy(handle)


def _destroy_merger(handle) -> None:
    _lib.lib.distro_merger_destroy(handle)


class Optimizer(Handle):
    """One peer's DisTrO optimizer (distro_optimizer).

    Parameters mirror distro_optimizer_options: ``run_id`` (payloads of other runs are refused),
    ``peer_id`` (unique within the run), ``chunk`` (target chunk edge, 1..256), ``topk`` (coefficients
    sent per chunk), ``decay`` (momentum decay in [0, 1)), ``values`` ('sign': 1 bit per coefficient,
    or 'int8'), ``device`` (a name from :func:`libdistro.devices`, or a Device) and ``threads`` (CPU
    worker threads, 0 = one per core; results do not depend on it).

    Use it as a context manager, or call :meth:`close`. Calls on one optimizer are serialised by a lock,
    so it may be shared between threads.
    """

    def __init__(self, run_id: int = 0, peer_id: int = 0, chunk: int = 64, topk: int = 4, decay: float = 0.999,
                 values: str = "sign", device: str | Device = "cpu", threads: int = 0):
        if isinstance(device, Device):
            device = device.name
        if values not in _VALUE_MODES:
            raise ValueError(f"values is {values!r}; expected 'sign' or 'int8'")
        device_name = _c_string(device, "device")
        options = _lib.OptimizerOptions.new(
            run_id=_uint(run_id, 64, "run_id"),
            peer_id=_uint(peer_id, 32, "peer_id"),
            chunk=_uint(chunk, 32, "chunk"),
            topk=_uint(topk, 32, "topk"),
            decay=_float(decay, "decay"),
            value_mode=_VALUE_MODES[values],
            device=device_name,
            threads=_uint(threads, 32, "threads"),
        )
        handle = _lib.OptimizerPtr()
        check(_lib.lib.distro_optimizer_create(byref(handle), byref(options)))
        self._tensors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._own(handle, _destroy_optimizer, self._tensors)
        self.run_id = int(run_id)
        self.peer_id = int(peer_id)
        self.values = values
        self.device = device

    # -- lifetime ---------------------------------------------------------------------------------

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._tensors)} tensors"
        return (f"<libdistro.Optimizer run_id={self.run_id} peer_id={self.peer_id} values={self.values!r} "
                f"device={self.device!r} {state}>")

    # -- tensors ----------------------------------------------------------------------------------

    def add_tensor(self, name: str, params: np.ndarray, grad: np.ndarray) -> None:
        """Registers a trainable tensor: its parameters (float32, C-contiguous, writable; updated in
        place by :meth:`apply`) and its gradient (float32, C-contiguous, same shape; read by
        :meth:`compress`). The optimizer keeps both arrays alive and uses them in place until it is
        closed: write new gradients into ``grad`` (``grad[...] = g``), do not rebind it. Every tensor
        must be added before the first compress, apply, hash or Merger."""
        name_bytes = _c_string(name, "tensor name")
        _check_array(params, "params", name, writable=True)
        _check_array(grad, "grad", name, writable=False)
        if params.shape != grad.shape:
            raise ValueError(f"tensor '{name}': params has shape {params.shape} but grad has shape {grad.shape}; "
                             f"expected the same shape")
        if np.may_share_memory(params, grad):
            raise ValueError(f"tensor '{name}': params and grad share memory; expected two separate arrays")
        rank = params.ndim
        shape = (c_int64 * max(rank, 1))(*params.shape)
        p = params.ctypes.data_as(POINTER(c_float))
        g = grad.ctypes.data_as(POINTER(c_float))
        with self._lock:
            check(_lib.lib.distro_optimizer_add_tensor(self._h(), name_bytes, shape, rank, p, g))
            self._tensors[name] = (params, grad)

    @property
    def tensors(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The registered tensors, in order: name -> (params, grad), the arrays themselves."""
        return dict(self._tensors)

    # -- a step -----------------------------------------------------------------------------------

    def compress(self, step: int, lr: float) -> bytes:
        """This peer's payload for ``step``: momentum update with learning rate ``lr``, DCT, top-k,
        error feedback, encoded in the wire format. Reads the registered gradients."""
        step = _uint(step, 64, "step")
        lr = _float(lr, "lr")
        out = _lib.BytesPtr()
        size = c_size_t()
        with self._lock:
            check(_lib.lib.distro_optimizer_compress(byref(out), byref(size), self._h(), step, lr))
        return _lib.take_bytes(out, size.value)

    def apply(self, update: bytes) -> int:
        """Applies a merged update (from :meth:`Merger.finish`) to the registered parameters in place.
        Returns the parameter hash afterwards. Nothing is written unless the whole update is valid."""
        keep, ptr, size = _lib.as_bytes_pointer(update)
        out = c_uint64()
        with self._lock:
            check(_lib.lib.distro_optimizer_apply(byref(out), self._h(), ptr, size))
        del keep
        return out.value

    def param_hash(self) -> int:
        """The hash of the registered parameters: equal hashes mean bit-identical replicas."""
        out = c_uint64()
        with self._lock:
            check(_lib.lib.distro_optimizer_param_hash(byref(out), self._h()))
        return out.value

    def manifest_hash(self) -> int:
        """The hash of the tensor list, shapes, chunk plan and value mode (equal on every peer of a run)."""
        out = c_uint64()
        with self._lock:
            check(_lib.lib.distro_optimizer_manifest_hash(byref(out), self._h()))
        return out.value

    def stats(self) -> dict:
        """The optimizer's figures: params, chunks, coefficients_sent, payload_bytes,
        payload_bits_per_param, update_bytes, update_bits_per_param."""
        s = _lib.OptimizerStats.new()
        with self._lock:
            check(_lib.lib.distro_optimizer_get_stats(byref(s), self._h()))
        return {name: getattr(s, name) for name, _ in _lib.OptimizerStats._fields_ if name != "struct_size"}


class Merger(Handle):
    """Merges the payloads of one step of ``optimizer``'s run into the update every peer applies
    (distro_merger). It copies what it needs from the optimizer (and freezes its tensor list)."""

    def __init__(self, optimizer: Optimizer, step: int):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a libdistro.Optimizer, got {type(optimizer).__name__}")
        step = _uint(step, 64, "step")
        handle = _lib.MergerPtr()
        with optimizer._lock:
            check(_lib.lib.distro_merger_create(byref(handle), optimizer._h(), step))
        self._own(handle, _destroy_merger)
        self.run_id = optimizer.run_id
        self.step = step

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.count} payloads"
        return f"<libdistro.Merger run_id={self.run_id} step={self.step} {state}>"

    def add(self, payload: bytes) -> None:
        """Checks and adds one peer's payload; a rejected payload changes nothing."""
        keep, ptr, size = _lib.as_bytes_pointer(payload)
        with self._lock:
            check(_lib.lib.distro_merger_add(self._h(), ptr, size))
        del keep

    @property
    def count(self) -> int:
        """Number of payloads accepted so far."""
        out = c_size_t()
        with self._lock:
            check(_lib.lib.distro_merger_count(byref(out), self._h()))
        return out.value

    def finish(self, lr: float, weight_decay: float = 0.0, prev_hash: int = 0) -> bytes:
        """The merged update: the peers' fixed-point mean coefficients, ``lr``, the weight-decay factor
        float32(1 - lr*weight_decay), and ``prev_hash`` (the parameter hash every replica should hold
        before applying it; 0 if unknown). A merger finishes once."""
        lr = _float(lr, "lr")
        weight_decay = _float(weight_decay, "weight_decay")
        prev_hash = _uint(prev_hash, 64, "prev_hash")
        out = _lib.BytesPtr()
        size = c_size_t()
        with self._lock:
            check(_lib.lib.distro_merger_finish(byref(out), byref(size), self._h(), lr, weight_decay, prev_hash))
        return _lib.take_bytes(out, size.value)


def inspect(message: bytes) -> dict:
    """Reads and checks the header and checksum of a payload or an update (no manifest needed).

    Returns a dict with kind ('payload' or 'update'), version, values ('sign' or 'int8'), run_id,
    step and manifest_hash; for a payload also peer_id (the sender); for an update also peers (the
    number of contributing peers), prev_hash, lr and decay_factor (float32 values as Python floats)."""
    keep, ptr, size = _lib.as_bytes_pointer(message)
    info = _lib.MessageInfo.new()
    check(_lib.lib.distro_message_inspect(byref(info), ptr, size))
    del keep
    out = {
        "kind": _MESSAGE_KINDS.get(info.kind, f"unknown({info.kind})"),
        "version": info.version,
        "values": _VALUE_NAMES.get(info.value_mode, f"unknown({info.value_mode})"),
        "run_id": info.run_id,
        "step": info.step,
        "manifest_hash": info.manifest_hash,
    }
    if info.kind == _lib.DISTRO_MESSAGE_UPDATE:
        out.update(peers=info.peer_id, prev_hash=info.prev_hash, lr=info.lr, decay_factor=info.decay_factor)
    else:
        out["peer_id"] = info.peer_id
    return out
