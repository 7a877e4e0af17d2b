"""The devices libdistro can run on: the CPU always, then CUDA and Vulkan devices whose driver loads."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from . import _lib
from .errors import check

__all__ = ["Device", "devices"]

_KINDS = {
    _lib.DISTRO_DEVICE_CPU: "cpu",
    _lib.DISTRO_DEVICE_CUDA: "cuda",
    _lib.DISTRO_DEVICE_VULKAN: "vulkan",
}


@dataclass(frozen=True)
class Device:
    """One device, as distro_devices_get describes it. ``name`` is what Optimizer(device=...) takes."""

    name: str
    description: str
    kind: str  # 'cpu', 'cuda' or 'vulkan' ('unknown(N)' for a kind newer than this binding)
    fp16: bool
    bf16: bool
    int64: bool
    optimizer: bool  # runs the DisTrO optimizer ops; others answer Unsupported when asked
    memory_total: int  # bytes; for the CPU, the machine's RAM
    memory_free: int  # bytes available now, 0 if unknown
    compute_units: int  # CPU threads, CUDA SMs, Vulkan compute units (0 if unknown)
    subgroup_size: int  # warp or subgroup width; 1 for the CPU

    @classmethod
    def _from_info(cls, info: _lib.DeviceInfo) -> "Device":
        flags = info.flags
        return cls(
            name=info.name.decode("utf-8", "replace"),
            description=info.description.decode("utf-8", "replace"),
            kind=_KINDS.get(info.kind, f"unknown({info.kind})"),
            fp16=bool(flags & _lib.DISTRO_DEVICE_FP16),
            bf16=bool(flags & _lib.DISTRO_DEVICE_BF16),
            int64=bool(flags & _lib.DISTRO_DEVICE_INT64),
            optimizer=bool(flags & _lib.DISTRO_DEVICE_OPTIMIZER),
            memory_total=int(info.memory_total),
            memory_free=int(info.memory_free),
            compute_units=int(info.compute_units),
            subgroup_size=int(info.subgroup_size),
        )


def devices() -> list[Device]:
    """Lists the devices present now (a fresh scan on every call). The CPU, named 'cpu', is always first."""
    handle = _lib.DevicesPtr()
    check(_lib.lib.distro_devices_scan(ctypes.byref(handle)))
    try:
        count = ctypes.c_size_t()
        check(_lib.lib.distro_devices_count(ctypes.byref(count), handle))
        out = []
        for i in range(count.value):
            info = _lib.DeviceInfo.new()
            check(_lib.lib.distro_devices_get(ctypes.byref(info), handle, i))
            out.append(Device._from_info(info))
        return out
    finally:
        _lib.lib.distro_devices_destroy(handle)
