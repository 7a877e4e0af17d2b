"""A coordinator and 4 nodes train nano for 50 rounds on loopback: every node ends with the same
parameter hash as the coordinator, and that hash equals the in-process `distro train --peers 4` run
with the same seed and settings (docs/network.md, "batches": with N nodes and no faults, round s
trains exactly the batches of in-process step s)."""
import json
import sqlite3
import subprocess

import netutil as nu

STEPS = 50


def test_four_nodes_equal_in_process_training(tmp_path):
    tokens = {f"n{i}": f"match-token-{i:04d}-abcdefgh" for i in range(1, 5)}
    cfg = nu.write_config(tmp_path, tokens, steps=STEPS, nodes_per_round=4, fill_wait_s=60)
    serve, port, fp = nu.start_serve(tmp_path, cfg)
    nodes = []
    try:
        for name, tok in tokens.items():
            nodes.append(nu.start_node(tmp_path, name, port, tok, "--pin", fp, "--history", str(tmp_path / f"{name}.sqlite")))
        assert serve.wait(240) == 0, serve.text()[-3000:]
        for n in nodes:
            assert n.wait(30) == 0, n.text()[-3000:]
    finally:
        serve.close()
        for n in nodes:
            n.close()

    state, step, coord_hash = nu.final(serve.text())
    assert (state, step) == ("complete", STEPS)
    for n in nodes:
        assert nu.final(n.text()) == ("complete", STEPS, coord_hash), n.text()[-2000:]
    # No faults: every round merged all 4 payloads.
    assert serve.text().count("4 of 4 payloads") == STEPS

    out = tmp_path / "train.json"
    subprocess.run([nu.distro_bin(), "train", "--data", str(nu.DATA), "--preset", "nano", "--peers", "4", "--steps",
                    str(STEPS), "--batch", "2", "--seq", "64", "--seed", "1", "--threads", "1", "--eval-every", "0",
                    "--eval-batches", "1", "--quiet", "--json", str(out)], check=True, timeout=300)
    summary = json.loads(out.read_text())["summary"]
    assert set(summary["replica_hashes"]) == {coord_hash}

    # The coordinator's ledger and each node's own history hold every round.
    for db in [tmp_path / "state" / "ledger.sqlite"] + [tmp_path / f"{name}.sqlite" for name in tokens]:
        con = sqlite3.connect(db)
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rounds = [t for t in tables if "round" in t]
        assert rounds, f"{db}: no rounds table among {tables}"
        assert con.execute(f"SELECT count(*) FROM {rounds[0]}").fetchone()[0] == STEPS, db
        con.close()
