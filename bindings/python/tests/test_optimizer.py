"""The optimizer, merger and inspect() over the real library: multi-peer round trips."""

import gc
import weakref

import numpy as np
import pytest

import libdistro
from conftest import MATRIX_SHAPE, VECTOR_SHAPE, Peer

LR = 1e-3
WD = 0.1


def merged_update(merger_opt, step, payloads, lr=LR, wd=WD, prev_hash=0):
    with libdistro.Merger(merger_opt, step) as m:
        for p in payloads:
            m.add(p)
        assert m.count == len(payloads)
        return m.finish(lr, weight_decay=wd, prev_hash=prev_hash)


def assert_exact_sign_step(old, new, factor, lr):
    """new == float32(old * factor) - lr * s, elementwise, for s in {-1, 0, 1}; returns the share of
    elements that moved."""
    f = np.float32(factor)
    lr = np.float32(lr)
    decayed = old * f
    assert decayed.dtype == np.float32
    down, up = decayed - lr, decayed + lr
    assert down.dtype == np.float32
    ok = (new == down) | (new == decayed) | (new == up)
    assert ok.all(), f"{np.count_nonzero(~ok)} elements are not a single sign step"
    return float(np.count_nonzero(new != decayed)) / new.size


@pytest.mark.parametrize("values", ["sign", "int8"])
def test_two_peers_stay_bit_identical(init, values):
    rngs = [np.random.default_rng(100 + i) for i in range(2)]
    peers = [Peer(init, peer_id=i, values=values) for i in range(2)]
    try:
        assert peers[0].opt.manifest_hash() == peers[1].opt.manifest_hash()
        h0 = peers[0].opt.param_hash()
        assert h0 == peers[1].opt.param_hash()
        for step in range(5):
            payloads = []
            for peer, rng in zip(peers, rngs):
                peer.fill_grads(rng)
                payloads.append(peer.opt.compress(step, LR))
            assert payloads[0] != payloads[1]

            info = libdistro.inspect(payloads[1])
            assert info["kind"] == "payload" and info["step"] == step and info["peer_id"] == 1
            assert info["run_id"] == 42 and info["values"] == values
            assert info["manifest_hash"] == peers[0].opt.manifest_hash()
            assert info["version"] == libdistro.DISTRO_WIRE_VERSION

            # Any peer may merge, in any order, and gets the same bytes.
            update = merged_update(peers[step % 2].opt, step, payloads, prev_hash=h0)
            assert update == merged_update(peers[(step + 1) % 2].opt, step, payloads[::-1], prev_hash=h0)

            u = libdistro.inspect(update)
            assert u["kind"] == "update" and u["step"] == step and u["peers"] == 2
            assert u["lr"] == float(np.float32(LR))
            assert u["prev_hash"] == h0
            factor = np.float32(1) - np.float32(LR) * np.float32(WD)
            assert u["decay_factor"] == float(factor)

            before = peers[0].snapshot()
            hashes = [peer.opt.apply(update) for peer in peers]
            assert hashes[0] == hashes[1] == peers[0].opt.param_hash() == peers[1].opt.param_hash()
            assert hashes[0] != h0
            h0 = hashes[0]
            for name in init:
                a, b = peers[0].params[name], peers[1].params[name]
                assert np.array_equal(a, b)
                assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
                moved = assert_exact_sign_step(before[name], a, factor, LR)
                assert moved > 0.5, f"{name}: only {moved:.2%} of the parameters moved"
    finally:
        for p in peers:
            p.close()


def test_merged_update_of_one_peer_matches_on_a_replica(peers):
    # A replica that contributed nothing still applies the update to the same bits.
    rng = np.random.default_rng(7)
    peers[0].fill_grads(rng)
    update = merged_update(peers[1].opt, 0, [peers[0].opt.compress(0, LR)])
    assert libdistro.inspect(update)["peers"] == 1
    assert peers[0].opt.apply(update) == peers[1].opt.apply(update)
    for name in peers[0].params:
        assert np.array_equal(peers[0].params[name].view(np.uint32), peers[1].params[name].view(np.uint32))


def test_empty_merger_applies_weight_decay_only(peers):
    before = peers[0].snapshot()
    update = merged_update(peers[0].opt, 3, [])
    info = libdistro.inspect(update)
    assert info["peers"] == 0
    peers[0].opt.apply(update)
    factor = np.float32(info["decay_factor"])
    for name, old in before.items():
        assert np.array_equal(peers[0].params[name], old * factor)


def test_results_do_not_depend_on_threads(init):
    a = Peer(init, peer_id=0, threads=1)
    b = Peer(init, peer_id=0, threads=2)
    try:
        for step in range(3):
            rng = np.random.default_rng(step)
            a.fill_grads(rng)
            for name in init:
                b.grads[name][...] = a.grads[name]
            pa, pb = a.opt.compress(step, LR), b.opt.compress(step, LR)
            assert pa == pb
            update = merged_update(a.opt, step, [pa])
            assert a.opt.apply(update) == b.opt.apply(update)
    finally:
        a.close()
        b.close()


def test_stats(peers):
    rng = np.random.default_rng(3)
    peers[0].fill_grads(rng)
    payload = peers[0].opt.compress(0, LR)
    update = merged_update(peers[0].opt, 0, [payload])
    peers[0].opt.apply(update)
    s = peers[0].opt.stats()
    n = int(np.prod(MATRIX_SHAPE)) + int(np.prod(VECTOR_SHAPE))
    assert s["params"] == n
    assert s["chunks"] >= 2 + 1  # 128x192 has at least 2 chunks of 64x64, the vector at least 1
    assert s["payload_bytes"] == len(payload)
    assert s["payload_bits_per_param"] == pytest.approx(8 * len(payload) / n)
    assert s["update_bytes"] == len(update)
    assert s["update_bits_per_param"] == pytest.approx(8 * len(update) / n)
    assert 0 < s["coefficients_sent"] <= s["chunks"] * 4
    assert set(s) == {"params", "chunks", "coefficients_sent", "payload_bytes", "payload_bits_per_param",
                      "update_bytes", "update_bits_per_param"}


def test_optimizer_keeps_arrays_alive_and_in_place():
    opt = libdistro.Optimizer(run_id=5)
    opt.add_tensor("w", np.full(MATRIX_SHAPE, 0.5, dtype=np.float32), np.ones(MATRIX_SHAPE, dtype=np.float32))
    params, grad = opt.tensors["w"]
    ref = weakref.ref(params)
    del params, grad
    gc.collect()
    assert ref() is not None
    payload = opt.compress(0, LR)
    update = merged_update(opt, 0, [payload], wd=0.0)
    h = opt.apply(update)
    assert h == opt.param_hash()
    params = opt.tensors["w"][0]
    assert params is ref()
    assert not np.array_equal(params, np.full(MATRIX_SHAPE, 0.5, dtype=np.float32))
    del params
    opt.close()
    del opt
    gc.collect()
    assert ref() is None  # released once the optimizer is destroyed


def test_gradients_are_read_in_place(peers):
    # Writing into the registered gradient changes the payload; the array is not copied at add_tensor.
    g = peers[0].grads["layer.weight"]
    g[...] = 0
    peers[0].grads["layer.bias"][...] = 0
    zero = peers[0].opt.compress(0, LR)
    g[0, 0] = 1.0
    one = peers[0].opt.compress(1, LR)
    assert libdistro.inspect(one)["step"] == 1
    assert zero != one


def test_close_and_context_manager(init):
    with libdistro.Optimizer() as opt:
        opt.add_tensor("v", np.zeros(8, np.float32), np.zeros(8, np.float32))
        assert not opt.closed
        m = libdistro.Merger(opt, 0)
        assert "0 payloads" in repr(m)
    assert opt.closed
    opt.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        opt.compress(0, LR)
    with pytest.raises(ValueError, match="closed"):
        opt.param_hash()
    # The merger copied what it needed: it outlives the optimizer.
    update = m.finish(LR)
    assert libdistro.inspect(update)["kind"] == "update"
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.add(b"x")


def test_rank3_tensor_and_many_tensors():
    rng = np.random.default_rng(11)
    shapes = {"a": (3, 16, 24), "b": (5,), "c": (2, 2, 2, 2), "d": (70, 33)}
    init = {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
    peers = [Peer(init, peer_id=i, chunk=16, topk=2) for i in range(3)]
    try:
        for step in range(2):
            pay = []
            for i, p in enumerate(peers):
                p.fill_grads(np.random.default_rng(step * 10 + i))
                pay.append(p.opt.compress(step, 0.01))
            update = merged_update(peers[2].opt, step, pay, lr=0.01, wd=0.0)
            hs = {p.opt.apply(update) for p in peers}
            assert len(hs) == 1
        for k in shapes:
            assert np.array_equal(peers[0].params[k].view(np.uint32), peers[2].params[k].view(np.uint32))
    finally:
        for p in peers:
            p.close()


def test_inspect_accepts_bytes_like(peers):
    peers[0].fill_grads(np.random.default_rng(0))
    payload = peers[0].opt.compress(9, LR)
    assert libdistro.inspect(bytearray(payload)) == libdistro.inspect(memoryview(payload)) == libdistro.inspect(payload)
    with pytest.raises(TypeError):
        libdistro.inspect("not bytes")
