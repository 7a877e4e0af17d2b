"""The command line's controls while a run goes on (docs/network.md, "running a run"): SIGUSR1 and
SIGUSR2 pause and resume the coordinator, SIGINT makes a node finish its round and leave, and a token
removed from the configuration file disconnects its node for good while the others go on."""
import json
import subprocess
import re
import signal
import time

import netutil as nu

STEPS = 16


def test_pause_resume_leave_and_revoke(tmp_path):
    tokens = {n: f"control-token-{n}-0123456789" for n in ["a", "b", "c"]}
    cfg = nu.write_config(tmp_path, tokens, steps=STEPS, nodes_per_round=3, fill_wait_s=0.3)
    serve, port, fp = nu.start_serve(tmp_path, cfg)
    procs = {n: nu.start_node(tmp_path, n, port, t, "--pin", fp) for n, t in tokens.items()}
    try:
        nu.wait_step(serve, 2)
        serve.signal(signal.SIGUSR1)
        nu.wait_for(lambda: "serve info: paused" in serve.text(), 30, "the pause", serve.text)
        held = nu.serve_step(serve.text())
        time.sleep(1.0)
        assert nu.serve_step(serve.text()) <= held + 1  # at most the round that was open
        serve.signal(signal.SIGUSR2)
        nu.wait_step(serve, held + 2)

        procs["c"].signal(signal.SIGINT)
        assert procs["c"].wait(60) == 0
        assert nu.final(procs["c"].text())[0] == "left"

        config = json.loads(cfg.read_text())
        del config["tokens"]["b"]
        cfg.write_text(json.dumps(config))  # noticed within a second, no signal needed
        assert procs["b"].wait(60) == 1
        assert "your token was revoked" in procs["b"].text()

        assert serve.wait(120) == 0
        assert procs["a"].wait(30) == 0
    finally:
        serve.close()
        for p in procs.values():
            p.close()
    log = serve.text()
    state, step, h = nu.final(log)
    assert (state, step) == ("complete", STEPS)
    assert nu.final(procs["a"].text()) == ("complete", STEPS, h)
    assert "node c is leaving after its current round" in log
    assert "node b: token revoked (connection closed)" in log
    assert "tokens reloaded" in log
    assert re.search(r"1 of 1 payloads \(a\)", log)  # a alone after b and c went


def test_command_line_refuses_bad_input(tmp_path):
    def run(*args):
        p = subprocess.run([nu.distro_bin(), *args], capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout + p.stderr

    assert run("serve") == (2, "distro serve: --config FILE is required (see distro serve --help)\n")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": str(nu.DATA), "stepz": 3, "tokens": {"a": "aaaaaaaaaaaaaaaa"}}))
    code, out = run("serve", "--config", str(bad))
    assert code == 1 and "unknown key 'stepz'" in out
    bad.write_text(json.dumps({"data": str(nu.DATA), "tokens": {"a": "short"}}))
    code, out = run("serve", "--config", str(bad))
    assert code == 1 and "the token of node 'a' must be 16..256" in out
    code, out = run("serve", "--config", str(tmp_path / "none.json"))
    assert code == 1 and "no run configuration at" in out
    code, out = run("node", "--token", "t" * 20)
    assert code == 2 and "--coordinator HOST:PORT is required" in out
    code, out = run("node", "--coordinator", "localhost", "--token", "t" * 20)
    assert code == 1 and "localhost" in out
    code, out = run("node", "--coordinator", "127.0.0.1:9", "--token", "t" * 20, "--pin", "sha256:xyz")
    assert code == 1 and "pin" in out
    code, out = run("node", "--coordinator", "127.0.0.1:9", "--token", "t" * 20, "--misbehave", "lie")
    assert code == 1 and "--misbehave 'lie' is unknown" in out
    # Two coordinators cannot share a port.
    tokens = {"a": "control-token-a-0123456789"}
    cfg = nu.write_config(tmp_path, tokens, steps=2)
    serve, port, fp = nu.start_serve(tmp_path, cfg)
    try:
        code, out = run("serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}")
        assert code == 1 and str(port) in out
    finally:
        serve.close()
