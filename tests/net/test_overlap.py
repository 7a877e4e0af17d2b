"""Overlapped rounds (docs/network.md, "Overlapped rounds"), on loopback:
  - a coordinator and 4 nodes train nano for 30 overlapped rounds: every node ends with the
    coordinator's hash, and that hash equals the in-process `distro train --overlap --peers 4` run
    (and differs from the run without overlap, so the option did change the arithmetic);
  - with overlap, a node killed with SIGKILL mid-run is restarted: the run completes and the node
    ends in sync with the coordinator."""
import json
import subprocess

import netutil as nu

STEPS = 30


def in_process_hash(tmp_path, overlap):
    out = tmp_path / f"train-{overlap}.json"
    args = [nu.distro_bin(), "train", "--data", str(nu.DATA), "--preset", "nano", "--peers", "4", "--steps",
            str(STEPS), "--batch", "2", "--seq", "64", "--seed", "1", "--threads", "1", "--eval-every", "0",
            "--eval-batches", "1", "--quiet", "--json", str(out)]
    if overlap:
        args.append("--overlap")
    subprocess.run(args, check=True, timeout=300)
    hashes = set(json.loads(out.read_text())["summary"]["replica_hashes"])
    assert len(hashes) == 1
    return hashes.pop()


def run_nodes(tmp_path, tokens, port, fp):
    return {name: nu.start_node(tmp_path, name, port, tok, "--pin", fp) for name, tok in tokens.items()}


def test_overlapped_run_equals_in_process_overlap(tmp_path):
    tokens = {f"o{i}": f"overlap-token-{i:04d}-abcdefgh" for i in range(1, 5)}
    cfg = nu.write_config(tmp_path, tokens, steps=STEPS, nodes_per_round=4, fill_wait_s=60, overlap=True)
    serve, port, fp = nu.start_serve(tmp_path, cfg)
    nodes = {}
    try:
        nodes = run_nodes(tmp_path, tokens, port, fp)
        assert serve.wait(240) == 0, serve.text()[-3000:]
        for n in nodes.values():
            assert n.wait(30) == 0, n.text()[-3000:]
    finally:
        serve.close()
        for n in nodes.values():
            n.close()

    state, step, coord_hash = nu.final(serve.text())
    assert (state, step) == ("complete", STEPS)
    for n in nodes.values():
        assert nu.final(n.text()) == ("complete", STEPS, coord_hash), n.text()[-2000:]
    assert serve.text().count("4 of 4 payloads") == STEPS
    assert "resync" not in serve.text()
    assert coord_hash == in_process_hash(tmp_path, True)
    assert coord_hash != in_process_hash(tmp_path, False)


def test_overlapped_run_survives_a_killed_node(tmp_path):
    tokens = {f"k{i}": f"overlap-kill-{i:04d}-abcdefgh" for i in range(1, 5)}
    cfg = nu.write_config(tmp_path, tokens, steps=20, nodes_per_round=4, fill_wait_s=0.5, round_deadline_s=20,
                          overlap=True)
    serve, port, fp = nu.start_serve(tmp_path, cfg)
    nodes = {}
    try:
        nodes = run_nodes(tmp_path, tokens, port, fp)
        nu.wait_step(serve, 5)
        nodes["k2"].kill9()
        nu.wait_step(serve, 8)
        nodes["k2"].close()
        nodes["k2"] = nu.start_node(tmp_path, "k2-again", port, tokens["k2"], "--pin", fp)
        assert serve.wait(240) == 0, serve.text()[-3000:]
        for n in nodes.values():
            assert n.wait(30) == 0, n.text()[-3000:]
    finally:
        serve.close()
        for n in nodes.values():
            n.close()

    state, step, coord_hash = nu.final(serve.text())
    assert (state, step) == ("complete", 20)
    for name, n in nodes.items():
        assert nu.final(n.text()) == ("complete", 20, coord_hash), name + ":\n" + n.text()[-2000:]
    text = serve.text()
    assert "node k2 left" in text
    # Rounds went on without k2 (fewer than 4 payloads), and k2 trained again after it rejoined.
    assert any(f"{m} of {m} payloads" in text or f"{m} of 4 payloads" in text for m in (2, 3))
    assert "step 20/20: 4 of 4 payloads" in text, text[-3000:]
