"""libdistro.History over the ledger fixture tests/data/ledger-v1.sqlite (written and checked by the C++
ledger test: three rounds of alice and bob, carol refused in round 2)."""

import ctypes
import shutil
import sqlite3
import subprocess

import pytest

import libdistro
from libdistro import _lib
from conftest import HEADER, REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "data" / "ledger-v1.sqlite"


@pytest.fixture
def ledger(tmp_path):
    """A copy of the fixture: even a read-only reader of a WAL database leaves -wal and -shm files."""
    path = tmp_path / "run.ledger"
    shutil.copyfile(FIXTURE, path)
    return path


def test_totals_per_node_sorted_by_name(ledger):
    with libdistro.History(ledger) as h:
        totals = h.totals()
    assert [t.node for t in totals] == ["alice", "bob", "carol"]
    alice, bob, carol = totals
    assert (alice.rounds, alice.tokens, alice.rejected) == (3, 4096, 0)
    assert (alice.bytes_up, alice.bytes_down) == (300 + 330 + 350, 1001 + 1002 + 1003)
    assert (alice.first_ms, alice.last_ms) == (1700000001000, 1700000003000)
    assert bob.bytes_up == 310 + 320 + 360
    # A refused contribution counts its traffic, but neither a round nor its tokens.
    assert (carol.rounds, carol.rejected, carol.tokens, carol.bytes_up) == (0, 1, 0, 40)


def test_contributions_newest_first(ledger):
    with libdistro.History(str(ledger)) as h:
        assert h.last_round() == 3
        bob = h.contributions("bob")
        assert [c.step for c in bob] == [3, 2, 1]
        assert all(c.node == "bob" and c.accepted and c.reason == "" for c in bob)
        assert (bob[2].bytes_up, bob[2].bytes_down, bob[2].tokens, bob[2].unix_ms) == (310, 1001, 1024, 1700000001000)
        (carol,) = h.contributions("carol")
        assert (carol.step, carol.accepted, carol.reason, carol.tokens) == (2, False, "wrong step", 512)
        everyone = h.contributions()
        assert [(c.step, c.node) for c in everyone] == [
            (3, "alice"), (3, "bob"), (2, "alice"), (2, "bob"), (2, "carol"), (1, "alice"), (1, "bob")]
        assert h.contributions(limit=2) == everyone[:2]
        assert h.contributions("bob", limit=1) == bob[:1]
        assert h.contributions("nobody") == []


def test_a_round_committed_while_open_is_seen(ledger):
    """The ledger stays open for the coordinator; a reader sees each round once it is committed. The
    writer here is plain SQLite, as the C++ Ledger would write a round: in one transaction."""
    with libdistro.History(ledger) as h:
        assert h.last_round() == 3
        w = sqlite3.connect(ledger)
        with w:
            w.execute("INSERT INTO rounds VALUES (4, 1, 99, 7, 1700000004000)")
            w.execute("INSERT INTO contributions VALUES (4, 'dave', 5, 99, 64, 1, '', 1700000004000)")
        w.close()
        assert h.last_round() == 4
        assert [t.node for t in h.totals()] == ["alice", "bob", "carol", "dave"]
        assert h.contributions(limit=1)[0].node == "dave"


def test_missing_garbage_and_foreign_files(tmp_path):
    with pytest.raises(libdistro.NotFound) as e:
        libdistro.History(tmp_path / "absent.ledger")
    assert "absent.ledger" in str(e.value)
    assert not (tmp_path / "absent.ledger").exists()

    junk = tmp_path / "junk.ledger"
    junk.write_bytes(bytes((i * 7919) % 251 for i in range(5000)))
    with pytest.raises(libdistro.CorruptError) as e:
        libdistro.History(junk)
    assert str(junk) in str(e.value) and "not a SQLite database" in str(e.value)

    other = tmp_path / "songs.db"
    c = sqlite3.connect(other)
    with c:
        c.execute("CREATE TABLE songs(title TEXT)")
    c.close()
    before = other.read_bytes()
    with pytest.raises(libdistro.MismatchError) as e:
        libdistro.History(other)
    assert "another application" in str(e.value)
    assert other.read_bytes() == before

    empty = tmp_path / "empty.ledger"
    empty.write_bytes(b"")
    with pytest.raises(libdistro.CorruptError):
        libdistro.History(empty)


def test_newer_schema_is_refused(ledger):
    c = sqlite3.connect(ledger)
    c.execute("PRAGMA user_version = 2")
    c.close()
    with pytest.raises(libdistro.MismatchError) as e:
        libdistro.History(ledger)
    assert "schema version 2" in str(e.value)


def test_argument_types_and_closed_handles(ledger):
    h = libdistro.History(ledger)
    with pytest.raises(TypeError):
        h.contributions(node=7)
    with pytest.raises(ValueError):
        h.contributions(node="a\0b")
    with pytest.raises(ValueError):
        h.contributions(limit=-1)
    with pytest.raises(TypeError):
        libdistro.History(3.5)
    assert "last_round=3" in repr(h)
    h.close()
    h.close()
    assert h.closed and "closed" in repr(h)
    with pytest.raises(ValueError):
        h.totals()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_struct_layouts_match_c(tmp_path):
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "distro/distro.h"', "int main(void) {",
             "distro_node_totals t = DISTRO_NODE_TOTALS_INIT; distro_contribution c = DISTRO_CONTRIBUTION_INIT;",
             'printf("init %zu %zu\\n", t.struct_size, c.struct_size);']
    structs = {"distro_node_totals": _lib.NodeTotals, "distro_contribution": _lib.Contribution}
    for cname, cls in structs.items():
        lines.append(f'printf("{cname} sizeof %zu\\n", sizeof({cname}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{cname} {field} %zu\\n", offsetof({cname}, {field}));')
    lines += ["return 0; }"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-I", str(HEADER.parent.parent), str(src), "-o", str(exe)],
                   check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    got = {tuple(line.split()[:2]): line.split()[2:] for line in out}
    for cname, cls in structs.items():
        assert int(got[(cname, "sizeof")][0]) == ctypes.sizeof(cls), cname
        for field, _ in cls._fields_:
            assert int(got[(cname, field)][0]) == getattr(cls, field).offset, (cname, field)
    init = next(line.split() for line in out if line.startswith("init "))
    assert (int(init[1]), int(init[2])) == (ctypes.sizeof(_lib.NodeTotals), ctypes.sizeof(_lib.Contribution))
