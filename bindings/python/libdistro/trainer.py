"""Local training of the built-in Llama-style model (distro_trainer).

A :class:`Trainer` runs N peers in this process, each with its own device, model replica and
optimizer state, on their own batches of one dataset. With the DisTrO optimizer they exchange only
compressed payloads and apply one merged update; with AdamW they average their gradients exactly (the
all-reduce baseline). After every step the library checks that all replicas are bit-identical.

    with libdistro.Trainer("corpus.txt", preset="nano", peers=2, steps=100) as t:
        for _ in range(100):
            s = t.step()                      # dict: step, lr, train_loss, ..., replica_hash
        print(t.evaluate())                   # validation loss of peer 0
        t.save("ckpt")                        # ckpt/checkpoint.bin
    with libdistro.Trainer.resume("ckpt") as t:
        t.set_total_steps(200)                # the saved run had 100; go on to 200
"""

from __future__ import annotations

import operator
import os
from ctypes import byref, c_double

from . import _lib
from ._handle import Handle
from .devices import Device
from .errors import check
from .optimizer import _c_string, _float, _uint

__all__ = ["Trainer"]

_OPTIMIZERS = {"distro": _lib.DISTRO_OPTIMIZER_DISTRO, "adamw": _lib.DISTRO_OPTIMIZER_ADAMW}
_VALUE_MODES = {"sign": _lib.DISTRO_VALUES_SIGN, "int8": _lib.DISTRO_VALUES_INT8}
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1

_STEP_FIELDS = tuple(name for name, _ in _lib.StepStats._fields_ if name != "struct_size")
_INFO_FIELDS = tuple(name for name, _ in _lib.TrainerInfo._fields_ if name != "struct_size")


def _int(value, what: str) -> int:
    """An integer that fits a C int (the library judges its range within that)."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}") from None
    if not _INT_MIN <= v <= _INT_MAX:
        raise ValueError(f"{what} is {v}; expected an integer that fits a C int")
    return v


def _path(value, what: str) -> bytes:
    """A file system path (str, bytes or os.PathLike) as the bytes the OS uses, without NUL."""
    try:
        b = os.fsencode(value)
    except TypeError:
        raise TypeError(f"{what} must be a path (str, bytes or os.PathLike), got {type(value).__name__}") from None
    if b"\0" in b:
        raise ValueError(f"{what} {value!r} contains a NUL character")
    return b


def _device_list(devices) -> bytes:
    """The comma-separated device list the C API takes. Names are checked here only for what the
    joining would hide (an empty name, a comma, a NUL); whether a device exists is the library's call."""
    if isinstance(devices, (str, bytes)) or not isinstance(devices, (list, tuple)):
        raise TypeError(f"devices must be a list of device names (str), e.g. ['cpu', 'cpu'], "
                        f"got {type(devices).__name__}")
    names = []
    for i, d in enumerate(devices):
        if isinstance(d, Device):
            d = d.name
        if not isinstance(d, str):
            raise TypeError(f"devices[{i}] must be a str (a device name such as 'cpu'), got {type(d).__name__}")
        if not d or "," in d:
            raise ValueError(f"devices[{i}] is {d!r}; expected a device name (non-empty, without commas)")
        names.append(_c_string(d, f"devices[{i}]"))
    return b",".join(names)


def _destroy_trainer(handle) -> None:
    _lib.lib.distro_trainer_destroy(handle)


class Trainer(Handle):
    """N peers training the built-in model in this process (distro_trainer).

    ``data``: a UTF-8 text file (byte tokens) or an llm.c-style token shard. ``preset``: 'nano'
    (~0.9M parameters), 'micro', 'small' or '1b'. The peers are either ``peers`` CPU peers (default 4)
    or one per entry of ``devices``, a list of device names (``['cpu', 'cuda:0']``); give one or the
    other. ``optimizer``: 'distro' or 'adamw' (the exact all-reduce baseline); another name raises
    ValueError here. The other keywords are the fields of distro_trainer_options, with its defaults:
    ``steps`` (length of the learning-rate schedule), ``batch``, ``micro_batch`` (0 = batch), ``seq``,
    ``lr`` (0 = 3e-3 for nano and micro, 4e-4 for larger presets), ``warmup`` (0 = min(100, steps/10)), ``min_lr_ratio``,
    ``weight_decay``, ``clip`` (0 = off), ``chunk``, ``topk``, ``decay``, ``values`` ('sign' or 'int8'),
    ``seed``, ``threads`` (CPU threads per peer, 0 = one per core), ``eval_batches`` and ``vocab``
    (0 = the dataset's).

    Types are checked here (TypeError, or ValueError where an integer does not fit its C field);
    ranges are the library's to judge, and its InvalidArgument names the field.

    Use it as a context manager, or call :meth:`close`. Calls on one trainer are serialised by a lock.
    """

    def __init__(self, data, preset: str = "nano", *, peers: int | None = None, devices=None,
                 optimizer: str = "distro", steps: int = 200, batch: int = 8, micro_batch: int = 0, seq: int = 128,
                 lr: float = 0.0, warmup: int = 0, min_lr_ratio: float = 0.1, weight_decay: float = 0.0,
                 clip: float = 1.0, chunk: int = 64, topk: int = 4, decay: float = 0.999, values: str = "sign",
                 seed: int = 1, threads: int = 0, eval_batches: int = 8, vocab: int = 0):
        if peers is not None and devices is not None:
            raise ValueError("give peers (that many CPU peers) or devices (one peer per device), not both")
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer is {optimizer!r}; expected 'distro' or 'adamw'")
        if values not in _VALUE_MODES:
            raise ValueError(f"values is {values!r}; expected 'sign' or 'int8'")
        # The bytes objects below are the C strings; they are kept in locals (and in the struct's own
        # references) until the create call returns. The library copies what it keeps.
        data_b = _path(data, "data")
        preset_b = _c_string(preset, "preset")
        devices_b = None if devices is None else _device_list(devices)
        options = _lib.TrainerOptions.new(
            preset=preset_b,
            vocab=_int(vocab, "vocab"),
            data=data_b,
            devices=devices_b,
            peers=_uint(4 if peers is None else peers, 32, "peers"),
            optimizer=_OPTIMIZERS[optimizer],
            steps=_uint(steps, 64, "steps"),
            batch=_uint(batch, 32, "batch"),
            micro_batch=_uint(micro_batch, 32, "micro_batch"),
            seq=_uint(seq, 32, "seq"),
            lr=_float(lr, "lr"),
            warmup=_uint(warmup, 64, "warmup"),
            min_lr_ratio=_float(min_lr_ratio, "min_lr_ratio"),
            weight_decay=_float(weight_decay, "weight_decay"),
            clip=_float(clip, "clip"),
            chunk=_uint(chunk, 32, "chunk"),
            topk=_uint(topk, 32, "topk"),
            decay=_float(decay, "decay"),
            value_mode=_VALUE_MODES[values],
            seed=_uint(seed, 64, "seed"),
            threads=_uint(threads, 32, "threads"),
            eval_batches=_uint(eval_batches, 64, "eval_batches"),
        )
        handle = _lib.TrainerPtr()
        check(_lib.lib.distro_trainer_create(byref(handle), byref(options)))
        del data_b, preset_b, devices_b
        self._adopt(handle)

    @classmethod
    def resume(cls, dir) -> "Trainer":
        """Continues a run saved with :meth:`save` (``dir`` holds checkpoint.bin), with the settings it
        was saved with; the resumed run is bit for bit the run that never stopped. NotFound if there is
        no checkpoint, CorruptError if it is truncated or damaged (the message says which),
        MismatchError for a checkpoint version this library does not read."""
        dir_b = _path(dir, "dir")
        handle = _lib.TrainerPtr()
        check(_lib.lib.distro_trainer_resume(byref(handle), dir_b))
        self = cls.__new__(cls)
        self._adopt(handle)
        return self

    def _adopt(self, handle) -> None:
        self._own(handle, _destroy_trainer)

    # -- lifetime ---------------------------------------------------------------------------------

    def __repr__(self) -> str:
        if self.closed:
            return "<libdistro.Trainer closed>"
        i = self.info
        return (f"<libdistro.Trainer peers={i['peers']} params={i['params']} "
                f"step {i['steps_done']}/{i['steps_total']}>")

    # -- training ---------------------------------------------------------------------------------

    def step(self) -> dict:
        """Takes one step with every peer. Returns the distro_step_stats fields as a dict: step (from
        1), lr, train_loss (mean over peers), grad_norm (peer 0's, before clipping), tokens (all
        peers), bytes_up_per_peer, bytes_down_per_peer, seconds, replica_hash (every replica's
        parameter hash after the step; the library has checked they are equal).
        StateError once the run has all its steps (raise them with :meth:`set_total_steps`)."""
        s = _lib.StepStats.new()
        with self._lock:
            check(_lib.lib.distro_trainer_step(byref(s), self._h()))
        return {name: getattr(s, name) for name in _STEP_FIELDS}

    def evaluate(self) -> float:
        """Mean validation loss of peer 0 over the configured number of fixed validation batches."""
        out = c_double()
        with self._lock:
            check(_lib.lib.distro_trainer_evaluate(byref(out), self._h()))
        return out.value

    def save(self, dir) -> None:
        """Writes ``dir``/checkpoint.bin atomically (the folder is created if needed)."""
        dir_b = _path(dir, "dir")
        with self._lock:
            check(_lib.lib.distro_trainer_save(self._h(), dir_b))

    @property
    def info(self) -> dict:
        """params, peers, steps_done, steps_total, allreduce_bytes_per_peer (what a bf16 ring
        all-reduce of the gradient would send per peer per step)."""
        s = _lib.TrainerInfo.new()
        with self._lock:
            check(_lib.lib.distro_trainer_get_info(byref(s), self._h()))
        return {name: getattr(s, name) for name in _INFO_FIELDS}

    def set_total_steps(self, steps: int) -> None:
        """Changes the run's total steps (the schedule's length); at least the steps already done."""
        steps = _uint(steps, 64, "steps")
        with self._lock:
            check(_lib.lib.distro_trainer_set_total_steps(self._h(), steps))
