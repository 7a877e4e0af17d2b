"""libdistro.Trainer: local multi-peer training of the built-in model (distro_trainer_*).

Small and quick: the nano preset, 2 CPU peers, batch 2, sequences of 32 tokens, one thread per peer,
on the committed corpus tests/data/genesis.txt. The whole file runs in a few seconds on 2 cores.
"""

import gc
import math
import weakref
from types import SimpleNamespace

import pytest

import libdistro
from conftest import REPO_ROOT

DATA = REPO_ROOT / "tests" / "data" / "genesis.txt"
STEPS = 6
SMALL = dict(peers=2, steps=STEPS, batch=2, seq=32, threads=1, lr=2e-3)
NANO_PARAMS = 918656  # the nano preset with the byte vocabulary (256)
STEP_KEYS = {"step", "lr", "train_loss", "grad_norm", "tokens", "bytes_up_per_peer", "bytes_down_per_peer",
             "seconds", "replica_hash"}
INFO_KEYS = {"params", "peers", "steps_done", "steps_total", "allreduce_bytes_per_peer"}

pytestmark = pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} not present")


def _tiny(**kw):
    """The cheapest trainer: one peer, one short sequence per step."""
    options = dict(peers=1, steps=1, batch=1, seq=8, threads=1)
    options.update(kw)
    return libdistro.Trainer(DATA, **options)


@pytest.fixture(scope="module")
def run():
    """One uninterrupted DisTrO run of STEPS steps, evaluated before and after."""
    with libdistro.Trainer(str(DATA), "nano", **SMALL) as t:
        info_before = t.info
        before = t.evaluate()
        steps = [t.step() for _ in range(STEPS)]
        after = t.evaluate()
        yield SimpleNamespace(before=before, after=after, steps=steps, info_before=info_before, info=t.info)


@pytest.fixture(scope="module")
def adamw():
    with libdistro.Trainer(DATA, optimizer="adamw", **SMALL) as t:
        yield SimpleNamespace(step=t.step(), info=t.info)


# -- training ---------------------------------------------------------------------------------------


def test_training_lowers_the_validation_loss(run):
    assert math.isfinite(run.before) and math.isfinite(run.after)
    assert run.after < run.before - 0.1, (run.before, run.after)
    assert run.steps[-1]["train_loss"] < run.steps[0]["train_loss"]


def test_step_stats(run):
    for i, s in enumerate(run.steps, start=1):
        assert set(s) == STEP_KEYS
        assert s["step"] == i
        assert s["tokens"] == 2 * 32 * 2  # batch * seq * peers
        assert 0 < s["lr"] <= 2e-3 * (1 + 1e-6)
        assert math.isfinite(s["train_loss"]) and s["grad_norm"] > 0 and s["seconds"] > 0
        assert 0 < s["bytes_up_per_peer"] < run.info["allreduce_bytes_per_peer"] // 100  # compressed
        assert s["bytes_down_per_peer"] > 0
        assert isinstance(s["replica_hash"], int) and 0 < s["replica_hash"] < 2**64
    # One hash per step (the library checked every replica has it), and the parameters changed each step.
    hashes = [s["replica_hash"] for s in run.steps]
    assert len(set(hashes)) == STEPS
    # The schedule decays towards min_lr_ratio * lr.
    assert run.steps[-1]["lr"] < run.steps[0]["lr"]


def test_info(run):
    assert set(run.info) == INFO_KEYS
    assert run.info_before == dict(params=NANO_PARAMS, peers=2, steps_done=0, steps_total=STEPS,
                                   allreduce_bytes_per_peer=2 * NANO_PARAMS)  # 2(N-1)/N * 2 bytes * params
    assert run.info == dict(run.info_before, steps_done=STEPS)


def test_save_and_resume_continue_the_same_run(run, tmp_path):
    half = STEPS // 2
    with libdistro.Trainer(DATA, **SMALL) as t:
        first = [t.step() for _ in range(half)]
        t.save(tmp_path / "ckpt")  # an os.PathLike; the folder is created
    assert (tmp_path / "ckpt" / "checkpoint.bin").is_file()
    with libdistro.Trainer.resume(str(tmp_path / "ckpt")) as r:
        assert r.info == dict(run.info_before, steps_done=half)
        rest = [r.step() for _ in range(STEPS - half)]
    got = first + rest
    assert [s["step"] for s in got] == list(range(1, STEPS + 1))
    assert [s["replica_hash"] for s in got] == [s["replica_hash"] for s in run.steps]
    for mine, theirs in zip(got, run.steps):
        for key in STEP_KEYS - {"seconds"}:
            assert mine[key] == theirs[key], (mine["step"], key)


def test_results_do_not_depend_on_threads(run):
    # Also the only test here with a multi-threaded CPU pool per peer (the others use threads=1).
    with libdistro.Trainer(DATA, **dict(SMALL, threads=2)) as t:
        got = [t.step()["replica_hash"] for _ in range(2)]
    assert got == [s["replica_hash"] for s in run.steps[:2]]


def test_adamw_baseline_runs(adamw, run):
    s = adamw.step
    assert set(s) == STEP_KEYS and s["step"] == 1
    assert 0 < s["replica_hash"] < 2**64 and s["grad_norm"] > 0
    # The same seeded initialisation and batches as the DisTrO run: the same loss before the first update.
    assert s["train_loss"] == run.steps[0]["train_loss"]
    assert s["replica_hash"] != run.steps[0]["replica_hash"]
    assert s["bytes_up_per_peer"] == s["bytes_down_per_peer"] > 0
    assert adamw.info["allreduce_bytes_per_peer"] == 2 * NANO_PARAMS


def test_adamw_reports_the_allreduce_share(adamw):
    # A ring all-reduce sends and receives the same amount: up plus down is the documented total.
    total = adamw.info["allreduce_bytes_per_peer"]
    assert adamw.step["bytes_up_per_peer"] + adamw.step["bytes_down_per_peer"] == total


def test_devices_list_and_int8_values():
    with libdistro.Trainer(DATA, devices=["cpu", libdistro.devices()[0]], steps=1, batch=1, seq=8, threads=1,
                           values="int8") as t:
        assert t.info["peers"] == 2
        assert t.step()["step"] == 1


# -- steps, lifetime --------------------------------------------------------------------------------


def test_stepping_past_the_run_is_a_state_error_until_steps_are_raised():
    with _tiny() as t:
        t.step()
        with pytest.raises(libdistro.StateError) as e:
            t.step()
        assert "1 steps" in str(e.value)
        assert t.info["steps_done"] == 1
        with pytest.raises(libdistro.InvalidArgument):
            t.set_total_steps(0)  # below the steps done
        t.set_total_steps(2)
        assert t.info["steps_total"] == 2
        assert t.step()["step"] == 2
        with pytest.raises(libdistro.StateError):
            t.step()


def test_set_total_steps_keeps_the_create_range():
    with _tiny() as t:
        with pytest.raises(libdistro.InvalidArgument):
            t.set_total_steps(0)


def test_close_and_context_manager():
    with _tiny() as t:
        assert not t.closed and "peers=1" in repr(t)
    assert t.closed and "closed" in repr(t)
    t.close()  # twice is fine
    for call in (t.step, t.evaluate, lambda: t.info, lambda: t.save("x"), lambda: t.set_total_steps(3)):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_finalizer_destroys_an_unclosed_trainer():
    t = _tiny()
    finalizer = t._finalizer
    ref = weakref.ref(t)
    del t
    gc.collect()
    assert ref() is None and not finalizer.alive


# -- errors -----------------------------------------------------------------------------------------


def test_missing_data_file_is_not_found_naming_the_path(tmp_path):
    missing = tmp_path / "no-such-corpus.txt"
    with pytest.raises(libdistro.NotFound) as e:
        libdistro.Trainer(missing, peers=1)
    assert str(missing) in str(e.value)


def test_unknown_preset_is_not_found():
    with pytest.raises(libdistro.NotFound) as e:
        _tiny(preset="gigantic")
    assert "gigantic" in str(e.value)


def test_unknown_device_is_not_found():
    with pytest.raises(libdistro.NotFound) as e:
        libdistro.Trainer(DATA, devices=["cpu", "quantum:7"], threads=1)
    assert "quantum:7" in str(e.value)


def test_unknown_optimizer_and_values_are_value_errors_before_c():
    # Documented choice: the names are mapped to C enums here, so an unknown one is Python's ValueError.
    with pytest.raises(ValueError, match="'sgd'"):
        libdistro.Trainer(DATA, optimizer="sgd")
    with pytest.raises(ValueError, match="'int4'"):
        libdistro.Trainer(DATA, values="int4")


@pytest.mark.parametrize("devices, error", [
    ("cpu,cpu", TypeError),         # a string, not a list
    (["cpu", 0], TypeError),
    (["cpu", ""], ValueError),      # would vanish from the comma-separated list
    (["cpu,cpu"], ValueError),      # would become two peers
    (["cpu\0"], ValueError),
])
def test_devices_must_be_a_list_of_names(devices, error):
    with pytest.raises(error):
        libdistro.Trainer(DATA, devices=devices)


def test_peers_and_devices_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        libdistro.Trainer(DATA, peers=2, devices=["cpu", "cpu"])


@pytest.mark.parametrize("field, value, error", [
    ("steps", "10", TypeError),
    ("batch", 2.0, TypeError),
    ("lr", "fast", TypeError),
    ("clip", None, TypeError),
    ("vocab", True, TypeError),
    ("batch", -1, ValueError),        # does not fit the uint32 field
    ("seed", 2**64, ValueError),
    ("vocab", 2**31, ValueError),     # does not fit the C int
    ("preset", 3, TypeError),
])
def test_python_types_are_checked_before_c(field, value, error):
    with pytest.raises(error):
        libdistro.Trainer(DATA, **{field: value})


def test_data_must_be_a_path():
    with pytest.raises(TypeError):
        libdistro.Trainer(42)


@pytest.mark.parametrize("options, words", [
    (dict(peers=0), "peers"),
    (dict(batch=0), "batch"),
    (dict(batch=4, micro_batch=3), "micro-batch"),
    (dict(seq=100000), "sequence length"),
    (dict(threads=5000), "threads"),
    (dict(lr=-1.0), "lr"),
    (dict(decay=1.0), "decay"),
    (dict(chunk=0), "chunk"),
    (dict(eval_batches=0), "eval_batches"),
    (dict(vocab=-5), "vocab"),
])
def test_ranges_are_the_librarys_to_judge(options, words):
    with pytest.raises(libdistro.InvalidArgument) as e:
        libdistro.Trainer(DATA, **dict(dict(peers=1, threads=1), **options))
    assert words in str(e.value)


def test_missing_checkpoint_is_not_found(tmp_path):
    with pytest.raises(libdistro.NotFound) as e:
        libdistro.Trainer.resume(tmp_path / "nothing-here")
    assert str(tmp_path / "nothing-here") in str(e.value)


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    with _tiny() as t:
        t.step()
        t.save(folder)
    return (folder / "checkpoint.bin").read_bytes()


@pytest.mark.parametrize("keep", [0.5, 0.999, 100])
def test_truncated_checkpoint_is_corrupt_and_says_truncated(checkpoint_bytes, tmp_path, keep):
    n = int(len(checkpoint_bytes) * keep) if isinstance(keep, float) else keep
    (tmp_path / "checkpoint.bin").write_bytes(checkpoint_bytes[:n])
    with pytest.raises(libdistro.CorruptError) as e:
        libdistro.Trainer.resume(tmp_path)
    assert "truncated" in str(e.value) and str(tmp_path / "checkpoint.bin") in str(e.value)


def test_damaged_checkpoint_is_corrupt(checkpoint_bytes, tmp_path):
    damaged = bytearray(checkpoint_bytes)
    damaged[len(damaged) // 2] ^= 0x40
    (tmp_path / "checkpoint.bin").write_bytes(bytes(damaged))
    with pytest.raises(libdistro.CorruptError, match="checksum"):
        libdistro.Trainer.resume(tmp_path)
    (tmp_path / "checkpoint.bin").write_bytes(b"")
    with pytest.raises(libdistro.CorruptError):
        libdistro.Trainer.resume(tmp_path)


def test_resumed_tiny_run_is_complete(checkpoint_bytes, tmp_path):
    (tmp_path / "checkpoint.bin").write_bytes(checkpoint_bytes)
    with libdistro.Trainer.resume(tmp_path) as t:
        assert t.info["steps_done"] == t.info["steps_total"] == 1
        with pytest.raises(libdistro.StateError):
            t.step()


def test_save_to_an_unwritable_place_is_an_io_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with _tiny() as t:
        with pytest.raises(libdistro.DistroIOError) as e:
            t.save(blocker / "ckpt")
    assert str(blocker) in str(e.value)
