"""Errors: the library's status codes become exceptions carrying its message; bad arrays and values
are refused in Python before they reach C; raw NULLs get INVALID_ARGUMENT, not a crash."""

import ctypes
import pickle
import threading

import numpy as np
import pytest

import libdistro
from libdistro import _lib, errors
from conftest import Peer

LR = 1e-3

ALL = [
    (1, libdistro.InvalidArgument),
    (2, libdistro.SizeError),
    (3, libdistro.StateError),
    (4, libdistro.NotFound),
    (5, libdistro.Unsupported),
    (6, libdistro.OutOfMemory),
    (7, libdistro.CorruptError),
    (8, libdistro.MismatchError),
    (9, libdistro.DeviceError),
    (10, libdistro.DistroIOError),
    (11, libdistro.NumericError),
    (12, libdistro.InternalError),
]


@pytest.mark.parametrize("status, cls", ALL)
def test_status_classes(raw, status, cls):
    e = errors.error_for_status(status, "boom")
    assert type(e) is cls and isinstance(e, libdistro.DistroError)
    assert e.status == status == cls.status
    assert e.status_name == raw.distro_status_name(status).decode() != "unknown status"
    assert str(e) == "boom"
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is cls and str(again) == "boom" and again.status == status


def test_unknown_status_is_a_plain_distro_error(raw):
    e = errors.error_for_status(999, "odd")
    assert type(e) is libdistro.DistroError and e.status == 999 and e.status_name == "unknown status"
    errors.check(0)  # OK raises nothing


def test_message_is_cleared_by_a_successful_call(raw):
    with pytest.raises(libdistro.InvalidArgument):
        libdistro.Optimizer(chunk=0)
    assert _lib.last_error()
    libdistro.devices()
    assert _lib.last_error() == ""


def test_last_error_is_per_thread():
    with pytest.raises(libdistro.InvalidArgument):
        libdistro.Optimizer(topk=0)
    seen = []
    t = threading.Thread(target=lambda: seen.append(_lib.last_error()))
    t.start()
    t.join()
    assert seen == [""]
    assert "topk" in _lib.last_error()


# -- errors from the library, with its messages ---------------------------------------------------


def test_nan_learning_rate(peers):
    with pytest.raises(libdistro.InvalidArgument) as e:
        peers[0].opt.compress(0, float("nan"))
    assert "learning rate" in str(e.value)
    assert e.value.status_name == "DISTRO_ERR_INVALID_ARGUMENT"
    with pytest.raises(libdistro.InvalidArgument, match="learning rate"):
        peers[0].opt.compress(0, -1.0)
    with pytest.raises(libdistro.InvalidArgument, match="learning rate"):
        peers[0].opt.compress(0, 1e300)  # not representable in float32: infinity


def test_nan_in_a_gradient_names_the_tensor_and_leaves_momentum_alone(init):
    a, b = Peer(init, peer_id=0), Peer(init, peer_id=0)
    try:
        rng = np.random.default_rng(5)
        a.fill_grads(rng)
        for name in init:
            b.grads[name][...] = a.grads[name]
        saved = a.grads["layer.weight"][3, 5]
        a.grads["layer.weight"][3, 5] = np.nan
        with pytest.raises(libdistro.NumericError) as e:
            a.opt.compress(0, LR)
        assert "layer.weight" in str(e.value) and str(3 * 192 + 5) in str(e.value)
        a.grads["layer.bias"][-1] = np.inf
        a.grads["layer.weight"][3, 5] = saved
        with pytest.raises(libdistro.NumericError, match="layer.bias"):
            a.opt.compress(0, LR)
        a.grads["layer.bias"][-1] = b.grads["layer.bias"][-1]
        # The failed steps changed nothing: the same payload as a peer that never failed.
        assert a.opt.compress(0, LR) == b.opt.compress(0, LR)
    finally:
        a.close()
        b.close()


def test_merger_refuses_garbage(peers):
    with libdistro.Merger(peers[0].opt, 0) as m:
        for junk in (b"garbage", b"", bytes(64), b"\xff" * 300):
            with pytest.raises(libdistro.CorruptError) as e:
                m.add(junk)
            assert str(e.value)
        assert m.count == 0


def test_truncated_and_flipped_payloads(peers):
    peers[0].fill_grads(np.random.default_rng(1))
    payload = peers[0].opt.compress(0, LR)
    with libdistro.Merger(peers[1].opt, 0) as m:
        for cut in range(0, len(payload), 7):
            with pytest.raises((libdistro.CorruptError, libdistro.MismatchError)):
                m.add(payload[:cut])
        for i in range(len(payload)):
            bad = bytearray(payload)
            bad[i] ^= 0x01
            with pytest.raises((libdistro.CorruptError, libdistro.MismatchError)):
                m.add(bytes(bad))
        m.add(payload)
        assert m.count == 1


def test_payload_from_another_run(init, peers):
    other = Peer(init, peer_id=5, run_id=43)
    try:
        other.fill_grads(np.random.default_rng(2))
        payload = other.opt.compress(0, LR)
        with libdistro.Merger(peers[0].opt, 0) as m:
            with pytest.raises(libdistro.MismatchError) as e:
                m.add(payload)
            assert "43" in str(e.value) and "42" in str(e.value)
    finally:
        other.close()


def test_payload_of_another_step_or_manifest(peers):
    peers[0].fill_grads(np.random.default_rng(2))
    payload = peers[0].opt.compress(4, LR)
    with libdistro.Merger(peers[0].opt, 5) as m:
        with pytest.raises(libdistro.MismatchError, match="step"):
            m.add(payload)
    other_init = {"x": np.zeros(10, np.float32)}
    other = Peer(other_init, peer_id=3)  # same run id, other tensors
    try:
        other.fill_grads(np.random.default_rng(0))
        with libdistro.Merger(peers[0].opt, 0) as m:
            with pytest.raises(libdistro.MismatchError, match="manifest"):
                m.add(other.opt.compress(0, LR))
    finally:
        other.close()


def test_same_peer_twice(peers):
    peers[0].fill_grads(np.random.default_rng(3))
    payload = peers[0].opt.compress(0, LR)
    with libdistro.Merger(peers[1].opt, 0) as m:
        m.add(payload)
        with pytest.raises(libdistro.StateError) as e:
            m.add(payload)
        assert "peer 0" in str(e.value)
        assert m.count == 1


def test_finished_merger(peers):
    with libdistro.Merger(peers[0].opt, 0) as m:
        with pytest.raises(libdistro.InvalidArgument, match="learning rate"):
            m.finish(float("nan"))
        with pytest.raises(libdistro.InvalidArgument, match="weight decay"):
            m.finish(LR, weight_decay=-0.5)
        m.finish(LR)
        with pytest.raises(libdistro.StateError):
            m.finish(LR)
        peers[0].fill_grads(np.random.default_rng(3))
        with pytest.raises(libdistro.StateError, match="finished"):
            m.add(peers[0].opt.compress(0, LR))


def test_add_tensor_after_compress(peers):
    peers[0].opt.compress(0, LR)
    with pytest.raises(libdistro.StateError) as e:
        peers[0].opt.add_tensor("late", np.zeros(4, np.float32), np.zeros(4, np.float32))
    assert "late" in str(e.value)
    assert "late" not in peers[0].opt.tensors


def test_merger_or_hash_freezes_the_tensor_list(init):
    p = Peer(init, peer_id=0)
    try:
        libdistro.Merger(p.opt, 0).close()
        with pytest.raises(libdistro.StateError):
            p.opt.add_tensor("late", np.zeros(4, np.float32), np.zeros(4, np.float32))
    finally:
        p.close()


def test_no_tensors():
    with libdistro.Optimizer() as opt:
        with pytest.raises(libdistro.StateError, match="no tensors"):
            opt.compress(0, LR)
        with pytest.raises(libdistro.StateError):
            libdistro.Merger(opt, 0)
        with pytest.raises(libdistro.StateError):
            opt.param_hash()


def test_apply_refuses_bad_updates_and_writes_nothing(init, peers):
    peers[0].fill_grads(np.random.default_rng(4))
    update = libdistro.Merger(peers[0].opt, 0)
    update.add(peers[0].opt.compress(0, LR))
    good = update.finish(LR, 0.1)
    before = peers[1].snapshot()
    h = peers[1].opt.param_hash()

    with pytest.raises(libdistro.CorruptError):
        peers[1].opt.apply(b"garbage")
    with pytest.raises(libdistro.CorruptError):
        peers[1].opt.apply(good[: len(good) // 2])
    with pytest.raises((libdistro.CorruptError, libdistro.MismatchError)):
        peers[1].opt.apply(good[:-1] + bytes([good[-1] ^ 0x80]))
    # A payload is not an update.
    with pytest.raises((libdistro.CorruptError, libdistro.MismatchError)):
        peers[1].opt.apply(peers[0].opt.compress(1, LR))

    other = Peer(init, peer_id=0, run_id=43)
    try:
        with libdistro.Merger(other.opt, 0) as m:
            foreign = m.finish(LR, 0.1)
        with pytest.raises(libdistro.MismatchError) as e:
            peers[1].opt.apply(foreign)
        assert "43" in str(e.value)
    finally:
        other.close()

    assert peers[1].opt.param_hash() == h
    for name, old in before.items():
        assert np.array_equal(peers[1].params[name].view(np.uint32), old.view(np.uint32))
    peers[1].opt.apply(good)  # still usable
    assert peers[1].opt.param_hash() != h


def test_inspect_refuses_garbage():
    with pytest.raises(libdistro.CorruptError):
        libdistro.inspect(b"garbage")
    with pytest.raises(libdistro.CorruptError):
        libdistro.inspect(b"")


def test_unknown_device():
    with pytest.raises(libdistro.NotFound) as e:
        libdistro.Optimizer(device="cuda:7")
    assert "cuda:7" in str(e.value) and "cpu" in str(e.value)


@pytest.mark.parametrize("options, field", [
    (dict(chunk=0), "chunk"),
    (dict(chunk=257), "chunk"),
    (dict(topk=0), "topk"),
    (dict(decay=1.0), "decay"),
    (dict(decay=-0.1), "decay"),
    (dict(decay=float("nan")), "decay"),
    (dict(threads=100000), "threads"),
])
def test_options_out_of_range_are_named_by_the_library(options, field):
    with pytest.raises(libdistro.InvalidArgument, match=field):
        libdistro.Optimizer(**options)


@pytest.mark.parametrize("options, exc", [
    (dict(values="int4"), ValueError),
    (dict(peer_id=-1), ValueError),
    (dict(peer_id=1 << 32), ValueError),
    (dict(run_id=-1), ValueError),
    (dict(chunk=64.0), TypeError),
    (dict(topk=True), TypeError),
    (dict(decay="0.9"), TypeError),
    (dict(device=0), TypeError),
    (dict(device="cpu\0x"), ValueError),
])
def test_options_python_cannot_represent(options, exc):
    with pytest.raises(exc):
        libdistro.Optimizer(**options)


def test_step_and_hash_ranges(peers):
    with pytest.raises(ValueError, match="step"):
        peers[0].opt.compress(-1, LR)
    with pytest.raises(ValueError, match="step"):
        libdistro.Merger(peers[0].opt, 1 << 64)
    with pytest.raises(TypeError, match="lr"):
        peers[0].opt.compress(0, None)
    with libdistro.Merger(peers[0].opt, (1 << 64) - 1) as m:
        with pytest.raises(ValueError, match="prev_hash"):
            m.finish(LR, prev_hash=-1)
        assert libdistro.inspect(m.finish(LR, prev_hash=(1 << 64) - 1))["step"] == (1 << 64) - 1


def test_library_checks_on_tensors():
    with libdistro.Optimizer() as opt:
        z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
        with pytest.raises(libdistro.InvalidArgument, match="empty"):
            opt.add_tensor("", z(4), z(4))
        with pytest.raises(libdistro.InvalidArgument, match="255"):
            opt.add_tensor("n" * 256, z(4), z(4))
        with pytest.raises(libdistro.SizeError):
            opt.add_tensor("scalar", np.zeros((), np.float32), np.zeros((), np.float32))
        with pytest.raises(libdistro.SizeError):
            opt.add_tensor("rank9", z(*[1] * 9), z(*[1] * 9))
        with pytest.raises(libdistro.SizeError, match="dimension"):
            opt.add_tensor("empty", z(3, 0), z(3, 0))
        opt.add_tensor("ok", z(4), z(4))
        with pytest.raises(libdistro.InvalidArgument, match="twice"):
            opt.add_tensor("ok", z(4), z(4))
        assert list(opt.tensors) == ["ok"]


# -- arrays refused in Python, before C ------------------------------------------------------------


class _NoAddTensor:
    """Stands in for the library: add_tensor must not be reached."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        if name == "distro_optimizer_add_tensor":
            raise AssertionError("reached the C library")
        return getattr(self._real, name)


BAD_ARRAYS = [
    ("float64 params", lambda: (np.zeros((4, 4)), np.zeros((4, 4), np.float32)), TypeError, "dtype float64"),
    ("float16 grad", lambda: (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float16)), TypeError, "float32"),
    ("big-endian", lambda: (np.zeros(4, ">f4"), np.zeros(4, np.float32)), TypeError, "float32"),
    ("list", lambda: ([0.0] * 4, np.zeros(4, np.float32)), TypeError, "numpy.ndarray"),
    ("non-contiguous", lambda: (np.zeros((4, 8), np.float32)[:, ::2], np.zeros((4, 4), np.float32)), ValueError,
     "C-contiguous"),
    ("fortran", lambda: (np.zeros((4, 3), np.float32, order="F"), np.zeros((4, 3), np.float32)), ValueError,
     "C-contiguous"),
    ("shape", lambda: (np.zeros((4, 4), np.float32), np.zeros(16, np.float32)), ValueError, "shape"),
    ("read-only params", lambda: (_readonly(), np.zeros(4, np.float32)), ValueError, "read-only"),
    ("same array", lambda: (lambda a: (a, a))(np.zeros(4, np.float32)), ValueError, "share memory"),
    ("unaligned", lambda: (_unaligned(), np.zeros(4, np.float32)), ValueError, "aligned"),
]


def _readonly():
    a = np.zeros(4, np.float32)
    a.setflags(write=False)
    return a


def _unaligned():
    buf = np.zeros(4 * 4 + 1, np.uint8)
    return np.frombuffer(buf.data, dtype=np.float32, count=4, offset=1)


@pytest.mark.parametrize("label, make, exc, words", BAD_ARRAYS, ids=[b[0] for b in BAD_ARRAYS])
def test_bad_arrays_are_refused_before_c(monkeypatch, label, make, exc, words):
    params, grad = make()
    with libdistro.Optimizer() as opt:
        monkeypatch.setattr(_lib, "lib", _NoAddTensor(_lib.lib))
        with pytest.raises(exc) as e:
            opt.add_tensor("t", params, grad)
        monkeypatch.undo()
        assert type(e.value) is exc
        assert words in str(e.value) and "'t'" in str(e.value)
        assert opt.tensors == {}


def test_read_only_grad_is_fine():
    g = np.ones(4, np.float32)
    g.setflags(write=False)
    with libdistro.Optimizer() as opt:
        opt.add_tensor("t", np.zeros(4, np.float32), g)
        assert len(opt.compress(0, LR)) > 0


def test_name_must_be_text():
    with libdistro.Optimizer() as opt:
        with pytest.raises(TypeError):
            opt.add_tensor(b"t", np.zeros(4, np.float32), np.zeros(4, np.float32))
        with pytest.raises(ValueError, match="NUL"):
            opt.add_tensor("a\0b", np.zeros(4, np.float32), np.zeros(4, np.float32))


# -- raw ctypes calls with NULL: INVALID_ARGUMENT, never a crash ----------------------------------


def test_raw_null_arguments_answer_invalid_argument(raw, init):
    p = Peer(init, peer_id=0)
    m = _lib.MergerPtr()
    assert raw.distro_merger_create(ctypes.byref(m), p.opt._handle, 0) == 0
    h = p.opt._handle
    out64 = ctypes.c_uint64()
    size = ctypes.c_size_t()
    buf = _lib.BytesPtr()
    one = (ctypes.c_int64 * 1)(4)
    arr = np.zeros(4, np.float32)
    fp = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    calls = {
        "devices_scan": lambda: raw.distro_devices_scan(None),
        "devices_count": lambda: raw.distro_devices_count(None, None),
        "devices_get": lambda: raw.distro_devices_get(None, None, 0),
        "optimizer_create": lambda: raw.distro_optimizer_create(None, None),
        "add_tensor optimizer": lambda: raw.distro_optimizer_add_tensor(None, b"x", one, 1, fp, fp),
        "add_tensor name": lambda: raw.distro_optimizer_add_tensor(h, None, one, 1, fp, fp),
        "add_tensor shape": lambda: raw.distro_optimizer_add_tensor(h, b"x", None, 1, fp, fp),
        "add_tensor params": lambda: raw.distro_optimizer_add_tensor(h, b"x", one, 1, None, fp),
        "add_tensor grad": lambda: raw.distro_optimizer_add_tensor(h, b"x", one, 1, fp, None),
        "compress out": lambda: raw.distro_optimizer_compress(None, ctypes.byref(size), h, 0, 0.0),
        "compress size": lambda: raw.distro_optimizer_compress(ctypes.byref(buf), None, h, 0, 0.0),
        "compress optimizer": lambda: raw.distro_optimizer_compress(ctypes.byref(buf), ctypes.byref(size), None, 0,
                                                                    0.0),
        "apply optimizer": lambda: raw.distro_optimizer_apply(ctypes.byref(out64), None, None, 0),
        "apply update": lambda: raw.distro_optimizer_apply(ctypes.byref(out64), h, None, 0),
        "apply update with size": lambda: raw.distro_optimizer_apply(None, h, None, 100),
        "param_hash out": lambda: raw.distro_optimizer_param_hash(None, h),
        "param_hash optimizer": lambda: raw.distro_optimizer_param_hash(ctypes.byref(out64), None),
        "manifest_hash out": lambda: raw.distro_optimizer_manifest_hash(None, h),
        "manifest_hash optimizer": lambda: raw.distro_optimizer_manifest_hash(ctypes.byref(out64), None),
        "get_stats out": lambda: raw.distro_optimizer_get_stats(None, h),
        "get_stats optimizer": lambda: raw.distro_optimizer_get_stats(ctypes.byref(_lib.OptimizerStats.new()), None),
        "merger_create out": lambda: raw.distro_merger_create(None, h, 0),
        "merger_create optimizer": lambda: raw.distro_merger_create(ctypes.byref(_lib.MergerPtr()), None, 0),
        "merger_add merger": lambda: raw.distro_merger_add(None, None, 0),
        "merger_add payload": lambda: raw.distro_merger_add(m, None, 0),
        "merger_add payload with size": lambda: raw.distro_merger_add(m, None, 64),
        "merger_count out": lambda: raw.distro_merger_count(None, m),
        "merger_count merger": lambda: raw.distro_merger_count(ctypes.byref(size), None),
        "merger_finish out": lambda: raw.distro_merger_finish(None, ctypes.byref(size), m, 0.0, 0.0, 0),
        "merger_finish size": lambda: raw.distro_merger_finish(ctypes.byref(buf), None, m, 0.0, 0.0, 0),
        "merger_finish merger": lambda: raw.distro_merger_finish(ctypes.byref(buf), ctypes.byref(size), None, 0.0,
                                                                 0.0, 0),
        "inspect out": lambda: raw.distro_message_inspect(None, None, 0),
        "inspect bytes": lambda: raw.distro_message_inspect(ctypes.byref(_lib.MessageInfo.new()), None, 10),
    }
    try:
        for label, call in calls.items():
            status = call()
            assert status == _lib.DISTRO_ERR_INVALID_ARGUMENT, label
            assert "NULL" in _lib.last_error(), (label, _lib.last_error())
        # The handles are untouched: the merger still works, the optimizer has no stray tensor.
        count = ctypes.c_size_t()
        assert raw.distro_merger_count(ctypes.byref(count), m) == 0 and count.value == 0
        assert list(p.opt.tensors) == list(init)
        # destroy and free accept NULL.
        assert raw.distro_devices_destroy(None) == 0
        assert raw.distro_optimizer_destroy(None) == 0
        assert raw.distro_merger_destroy(None) == 0
        raw.distro_free(None)
        assert raw.distro_status_name(-1) == b"unknown status"
    finally:
        raw.distro_merger_destroy(m)
        p.close()


def test_struct_size_too_small_is_a_size_error(raw, peers):
    s = _lib.OptimizerStats.new()
    s.struct_size = 4
    with pytest.raises(libdistro.SizeError, match="struct_size"):
        errors.check(raw.distro_optimizer_get_stats(ctypes.byref(s), peers[0].opt._handle))
    o = _lib.OptimizerOptions.new()
    o.struct_size = 0
    h = _lib.OptimizerPtr()
    with pytest.raises(libdistro.SizeError, match="struct_size"):
        errors.check(raw.distro_optimizer_create(ctypes.byref(h), ctypes.byref(o)))
    assert not h  # output untouched
    info = _lib.MessageInfo.new()
    info.struct_size = 1
    with pytest.raises(libdistro.SizeError):
        errors.check(raw.distro_message_inspect(ctypes.byref(info), ctypes.cast(ctypes.c_char_p(b"x"), _lib.BytesPtr), 1))


# -- regressions of bugs found by these tests ---------------------------------------------------------


def test_finish_with_too_much_weight_decay_is_refused_up_front(peers):
    with libdistro.Merger(peers[0].opt, 0) as m:
        with pytest.raises(libdistro.InvalidArgument) as e:
            m.finish(1.0, weight_decay=2.0)
        assert "weight decay" in str(e.value) and "encode_update" not in str(e.value)
        m.finish(LR, weight_decay=0.1)  # a refused call changes nothing


def test_overflowing_momentum_is_refused_and_leaves_momentum_alone(init):
    a, b = Peer(init, peer_id=0), Peer(init, peer_id=0)
    try:
        a.fill_grads(np.random.default_rng(8))
        for name in init:
            b.grads[name][...] = a.grads[name]
        with pytest.raises((libdistro.NumericError, libdistro.InvalidArgument)):
            a.opt.compress(0, 3e38)
        assert a.opt.compress(0, LR) == b.opt.compress(0, LR)
    finally:
        a.close()
        b.close()


def test_double_destroy_is_answered_not_crashed(raw):
    handle = _lib.OptimizerPtr()
    assert raw.distro_optimizer_create(ctypes.byref(handle), None) == 0
    assert raw.distro_optimizer_destroy(handle) == 0
    # The handle is gone: destroying or using it again is an error with a message, not a crash.
    assert raw.distro_optimizer_destroy(handle) == _lib.DISTRO_ERR_INVALID_ARGUMENT
    assert "not live" in _lib.last_error()
    h = ctypes.c_uint64()
    assert raw.distro_optimizer_param_hash(ctypes.byref(h), handle) == _lib.DISTRO_ERR_INVALID_ARGUMENT
    assert "not live" in _lib.last_error()
