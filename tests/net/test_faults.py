"""Faults are normal (docs/network.md, "failure cases"). One run of 24 rounds with 7 batch slots
(one per node present from the start), in which, while the run goes on:
  - a node is killed with SIGKILL mid-run and restarted: it rejoins and ends in sync;
  - the coordinator is killed with SIGKILL and restarted on the same port: it resumes from its last
    durable round and every node reconnects;
  - a late node joins after the coordinator's update history is gone: it downloads the checkpoint;
  - four nodes each send one bad payload (replayed, wrong step, oversized frame, undecodable), are cut
    off with the reason logged, reconnect and go on;
  - a node whose parameters drift is told and resyncs from the checkpoint;
  - a wrong token, a wrong pinned certificate, garbage bytes, an oversized frame and a malformed hello
    are each refused with their reason.
At the end every node, honest or reformed, holds the coordinator's final hash."""
import re
import struct

import netutil as nu

STEPS = 24


def test_faults_leave_the_run_going_and_in_sync(tmp_path):
    names = ["n1", "n2", "replay", "wrongstep", "oversized", "garbage", "drift", "late"]
    tokens = {n: f"fault-token-{n}-0123456789" for n in names}
    cfg = nu.write_config(tmp_path, tokens, steps=STEPS, nodes_per_round=7, fill_wait_s=0.5,
                          round_deadline_s=20, update_history=3)
    serve, port, fp = nu.start_serve(tmp_path, cfg)
    procs = {}
    serves = [serve]
    try:
        for n in ["n1", "n2", "replay", "wrongstep", "oversized", "garbage", "drift"]:
            extra = ["--misbehave", n.replace("wrongstep", "wrong-step")] if n not in ("n1", "n2") else []
            procs[n] = nu.start_node(tmp_path, n, port, tokens[n], *extra)

        # Refused at the door, while the run goes on.
        bad_token = nu.start_node(tmp_path, "badtoken", port, "no-such-token-0123456789")
        bad_pin = nu.start_node(tmp_path, "badpin", port, tokens["n1"], "--pin", "sha256:" + "0" * 64)
        assert bad_token.wait(60) == 1
        assert "unknown or revoked token" in bad_token.text()
        assert bad_pin.wait(60) == 1
        assert "does not match the pinned fingerprint" in bad_pin.text()

        garbage = nu.tls_exchange(port, bytes(range(256)) * 4)
        assert garbage == b"" or not nu.error_reasons(garbage)  # the transport just closes
        oversized = nu.tls_exchange(port, struct.pack("<IB", 50_000_000, 1) + b"x" * 100)
        assert oversized == b"" or not nu.error_reasons(oversized)
        hello_bad = nu.tls_exchange(port, nu.frame(1, struct.pack("<HH", 1, 300) + b"t" * 10))
        assert any("hello message" in r for r in nu.error_reasons(hello_bad)), hello_bad
        hello_version = nu.tls_exchange(port, nu.frame(1, struct.pack("<HH", 99, 20) + b"t" * 20 + b"\0\0"))
        assert any("version 99" in r for r in nu.error_reasons(hello_version)), hello_version

        nu.wait_step(serve, 4)
        procs["n2"].kill9()
        nu.wait_step(serve, 6)
        procs["n2"] = nu.start_node(tmp_path, "n2-again", port, tokens["n2"])

        nu.wait_step(serve, 9)
        serve.kill9()
        before = nu.serve_step(serve.text())
        serve, port2, fp2 = nu.start_serve(tmp_path, cfg, listen=f"127.0.0.1:{port}", tag="serve2")
        serves.append(serve)
        assert (port2, fp2) == (port, fp)  # same port, same certificate: pinned nodes reconnect

        nu.wait_step(serve, before + 4)
        procs["late"] = nu.start_node(tmp_path, "late", port, tokens["late"], "--pin", fp)

        assert serve.wait(180) == 0, serve.text()[-4000:]
        for n, p in procs.items():
            assert p.wait(30) == 0, f"{n}:\n" + p.text()[-3000:]
    finally:
        for p in serves + list(procs.values()):
            p.close()

    state, step, h = nu.final(serve.text())
    assert (state, step) == ("complete", STEPS)
    for n, p in procs.items():
        assert nu.final(p.text()) == ("complete", STEPS, h), f"{n}:\n" + p.text()[-3000:]

    log1, log2 = serves[0].text(), serves[1].text()
    logs = log1 + log2
    # The restarted coordinator resumed from its last durable round, not from zero.
    resumed = int(re.search(r"at step (\d+) of %d" % STEPS, log2).group(1))
    assert 9 <= resumed <= before
    # The killed node was noticed and the round went on without it.
    assert "node n2 left" in log1
    # Each bad payload was refused with its reason.
    assert "node replay: a second payload for batch" in logs and "(replayed)" in logs
    assert re.search(r"node wrongstep: payload for step (\d+) but the round is (\d+)", logs)
    assert re.search(r"node oversized left: frame kind 8 of \d+ bytes exceeds its limit of \d+", logs)
    assert "node garbage: payload for step" in logs and "does not decode" in logs
    # ... and the nodes came back and were merged again afterwards.
    for n in ["replay", "wrongstep", "oversized", "garbage"]:
        assert "misbehaving on purpose" in procs[n].text()
        assert re.search(r"trained \d+ batches \([1-9]\d* merged\)", procs[n].text()), procs[n].text()[-2000:]
    # The drifting node was told, fetched the checkpoint and verified it.
    assert "node drift: resync from the checkpoint" in logs
    assert "verified" in procs["drift"].text()
    # The late node came after the update history was gone: it took the checkpoint.
    assert "downloading the checkpoint" in procs["late"].text()
    # Rejected at the door, with reasons in the coordinator's log too.
    assert "unknown or revoked token (rejected)" in log1
    assert "exceeds its limit" in log1
