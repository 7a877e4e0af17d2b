"""Device listing."""

import ctypes

import pytest

import libdistro
from libdistro import _lib


def test_cpu_is_listed_first_and_runs_the_optimizer():
    devs = libdistro.devices()
    assert len(devs) >= 1
    cpu = devs[0]
    assert isinstance(cpu, libdistro.Device)
    assert cpu.name == "cpu" and cpu.kind == "cpu"
    assert cpu.optimizer is True
    assert cpu.memory_total > 0
    assert cpu.memory_free <= cpu.memory_total
    assert cpu.compute_units >= 1
    assert cpu.subgroup_size == 1
    assert cpu.description
    for d in devs:
        assert d.kind in ("cpu", "cuda", "vulkan")
        assert isinstance(d.fp16, bool) and isinstance(d.bf16, bool) and isinstance(d.int64, bool)
    assert len({d.name for d in devs}) == len(devs)


def test_device_object_selects_the_device():
    cpu = libdistro.devices()[0]
    with libdistro.Optimizer(device=cpu) as opt:
        assert opt.device == "cpu"


def test_devices_get_checks_index_and_struct_size(raw):
    handle = _lib.DevicesPtr()
    assert raw.distro_devices_scan(ctypes.byref(handle)) == 0
    try:
        count = ctypes.c_size_t()
        assert raw.distro_devices_count(ctypes.byref(count), handle) == 0
        info = _lib.DeviceInfo.new()
        with pytest.raises(libdistro.NotFound) as e:
            libdistro.errors.check(raw.distro_devices_get(ctypes.byref(info), handle, count.value))
        assert "out of range" in str(e.value)
        small = _lib.DeviceInfo.new()
        small.struct_size = 8
        with pytest.raises(libdistro.SizeError) as e:
            libdistro.errors.check(raw.distro_devices_get(ctypes.byref(small), handle, 0))
        assert "struct_size" in str(e.value)
    finally:
        raw.distro_devices_destroy(handle)


def test_a_device_that_is_not_there():
    with pytest.raises(libdistro.NotFound) as e:
        libdistro.Optimizer(device="cuda:7")
    text = str(e.value)
    assert "cuda:7" in text
    for d in libdistro.devices():
        assert d.name in text  # the message lists the devices present
    assert e.value.status == _lib.DISTRO_ERR_NOT_FOUND
    assert e.value.status_name == "DISTRO_ERR_NOT_FOUND"
