"""libdistro.Coordinator and libdistro.Node: a tiny nano run on loopback in this process (3 rounds,
2 nodes), events delivered to Python callbacks, statuses, live controls and the error paths."""

import ctypes
import shutil
import subprocess
import threading

import pytest

import libdistro
from libdistro import _lib
from conftest import HEADER, REPO_ROOT

DATA = REPO_ROOT / "tests" / "data" / "genesis.txt"
ROUNDS = 3
TOKENS = {"alpha": "alpha-token-0123456789", "beta": "beta-token-0123456789"}


def config(tmp_path, **over):
    c = {"preset": "nano", "data": str(DATA), "steps": ROUNDS, "batch": 2, "seq": 32, "seed": 3,
         "nodes_per_round": 2, "min_nodes": 2, "fill_wait_s": 5, "round_deadline_s": 30,
         "listen": "127.0.0.1:0", "state_dir": str(tmp_path / "state"), "tokens": TOKENS}
    c.update(over)
    return c


class Recorder:
    """Collects events from the library's io thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = []

    def __call__(self, event):
        with self.lock:
            self.events.append(event)

    def kinds(self, kind):
        with self.lock:
            return [e for e in self.events if e.kind == kind]


def test_a_small_run_completes_with_equal_hashes_and_events(tmp_path):
    coord_events = Recorder()
    with libdistro.Coordinator(config(tmp_path), on_event=coord_events) as c:
        assert c.status().state == "created"
        fp = c.fingerprint
        assert fp.startswith("sha256:") and len(fp) == 71
        c.start()
        assert c.port != 0
        c.set_limits(1e9, 1e9)
        recorders = [Recorder(), Recorder()]
        nodes = [libdistro.Node(f"127.0.0.1:{c.port}", TOKENS[name], pin=fp if i == 0 else None, threads=1,
                                retry_min_s=0.2, retry_max_s=1.0, on_event=recorders[i],
                                history=tmp_path / f"{name}.sqlite")
                 for i, name in enumerate(["alpha", "beta"])]
        try:
            for n in nodes:
                n.start()
            nodes[1].pause()
            nodes[1].resume()
            nodes[0].set_limits(1e9, 1e9)
            for n in nodes:
                assert n.wait(timeout=60), n.status()
            assert c.wait(timeout=30)
            cs = c.status()
            assert cs.state == "complete" and cs.step == ROUNDS and cs.total_steps == ROUNDS
            assert cs.bytes_up > 0 and cs.bytes_down > 0
            for name, n, rec in zip(["alpha", "beta"], nodes, recorders):
                s = n.status()
                assert s.state == "complete" and s.node_name == name and s.error == ""
                assert s.step == ROUNDS and s.param_hash == cs.param_hash
                assert s.coordinator_fingerprint == fp
                steps = rec.kinds("step_done")
                assert [e.step for e in steps] == list(range(1, ROUNDS + 1))
                assert rec.kinds("joined")
                assert not n.callback_errors
            assert len(coord_events.kinds("step_done")) == ROUNDS
            assert {e.node for e in coord_events.kinds("joined")} == {"alpha", "beta"}
        finally:
            for n in nodes:
                n.close()
    # The nodes' local ledgers recorded their contributions.
    with libdistro.History(tmp_path / "alpha.sqlite") as h:
        assert h.last_round() == ROUNDS


def test_a_wrong_token_fails_the_node_with_an_error_event(tmp_path):
    with libdistro.Coordinator(config(tmp_path, min_nodes=1)) as c:
        c.start()
        rec = Recorder()
        with libdistro.Node(f"127.0.0.1:{c.port}", "wrong-token-0123456789", on_event=rec) as n:
            n.start()
            assert n.wait(timeout=30)
            s = n.status()
            assert s.state == "failed" and "token" in s.error
            assert any("token" in e.message for e in rec.kinds("error"))
        c.stop()
        assert c.wait(timeout=30)
        assert c.status().state == "stopped"


def test_a_raising_callback_is_kept_not_propagated(tmp_path):
    def boom(event):
        raise RuntimeError("from the callback")

    with libdistro.Coordinator(config(tmp_path), on_event=boom) as c:
        c.start()  # its "listening" info event raises in Python
        c.stop()
        assert c.wait(timeout=30)
        assert c.callback_errors and isinstance(c.callback_errors[0], RuntimeError)


def test_wait_times_out_and_close_from_another_thread_ends_it(tmp_path):
    with libdistro.Coordinator(config(tmp_path)) as c:
        c.start()
        assert c.wait(timeout=0.2) is False  # no nodes: it waits for them
        assert c.status().state == "waiting"
        result = []
        t = threading.Thread(target=lambda: result.append(c.wait()))
        t.start()
        c.close()  # stops it, lets the waiting thread return, then destroys it
        t.join(timeout=30)
        assert result == [True]
        assert c.closed


def test_errors(tmp_path):
    with pytest.raises(libdistro.NotFound, match="nonexistent"):
        libdistro.Coordinator(tmp_path / "nonexistent.json")
    with pytest.raises(libdistro.InvalidArgument, match="'batch'"):
        libdistro.Coordinator(config(tmp_path, batch=0))
    with pytest.raises(libdistro.InvalidArgument, match="port 0"):
        libdistro.Node("127.0.0.1:0", "0123456789abcdef")
    with pytest.raises(libdistro.InvalidArgument, match="pin"):
        libdistro.Node("127.0.0.1:9", "0123456789abcdef", pin="sha256:nothex")
    with pytest.raises(TypeError):
        libdistro.Node("127.0.0.1:9", "0123456789abcdef", on_event=42)
    n = libdistro.Node("127.0.0.1:9", "0123456789abcdef")
    with pytest.raises(libdistro.StateError, match="not started"):
        n.pause()
    with pytest.raises(libdistro.InvalidArgument, match="rate limits"):
        n.set_limits(-1, 0)
    assert n.status().state == "created"
    n.close()
    n.close()
    with pytest.raises(ValueError, match="closed"):
        n.status()


def test_the_raw_handles_refuse_a_destroyed_one(tmp_path):
    lib = _lib.lib
    handle = _lib.NodePtr()
    opts = _lib.NodeOptions.new(coordinator=b"127.0.0.1:9", token=b"0123456789abcdef")
    assert lib.distro_node_create(ctypes.byref(handle), ctypes.byref(opts)) == _lib.DISTRO_OK
    assert lib.distro_node_destroy(handle) == _lib.DISTRO_OK
    s = _lib.NodeStatus.new()
    assert lib.distro_node_get_status(ctypes.byref(s), handle) == _lib.DISTRO_ERR_INVALID_ARGUMENT
    assert "not live" in _lib.last_error()
    assert lib.distro_coordinator_create(ctypes.byref(_lib.CoordinatorPtr()), None) == _lib.DISTRO_ERR_INVALID_ARGUMENT


NET_STRUCTS = {
    "distro_net_event": _lib.NetEvent,
    "distro_coordinator_options": _lib.CoordinatorOptions,
    "distro_coordinator_status": _lib.CoordinatorStatus,
    "distro_node_options": _lib.NodeOptions,
    "distro_node_status": _lib.NodeStatus,
}


@pytest.mark.skipif(not HEADER.exists() or shutil.which("cc") is None, reason="needs the header and a C compiler")
def test_network_struct_layouts_and_node_defaults_match_c(tmp_path):
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "distro/distro.h"', "int main(void) {",
             "distro_node_options n = DISTRO_NODE_OPTIONS_INIT;"]
    for cname, cls in NET_STRUCTS.items():
        lines.append(f'printf("{cname} sizeof %zu\\n", sizeof({cname}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{cname} {field} %zu\\n", offsetof({cname}, {field}));')
    for field in _lib.NodeOptions.DEFAULTS:
        lines.append(f'printf("node_init {field} %.17g\\n", (double)n.{field});')
    lines += ["return 0; }"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-I", str(HEADER.parent.parent), str(src), "-o", str(exe)],
                   check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    got = {tuple(line.split()[:2]): line.split()[2] for line in out}
    for cname, cls in NET_STRUCTS.items():
        assert int(got[(cname, "sizeof")]) == ctypes.sizeof(cls), cname
        for field, _ in cls._fields_:
            assert int(got[(cname, field)]) == getattr(cls, field).offset, (cname, field)
    for field, value in _lib.NodeOptions.DEFAULTS.items():
        assert float(got[("node_init", field)]) == value, field
