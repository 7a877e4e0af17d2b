"""Finding and loading the library, version checks, and parity of the binding with distro.h."""

import ctypes
import os
import re
import shutil
import subprocess
import sys

import pytest

import libdistro
from libdistro import _lib
from conftest import HEADER, PACKAGE_ROOT, REPO_ROOT


def test_library_version_is_the_bindings_version(raw):
    assert libdistro.library_version() == _lib.DISTRO_VERSION_STRING == libdistro.__version__
    assert raw.distro_version_number() == _lib.DISTRO_VERSION_NUMBER
    assert raw.distro_abi_version() == _lib.DISTRO_ABI_VERSION
    assert os.path.exists(libdistro.library_path())


def test_abi_mismatch_raises_import_error_naming_both(raw):
    with pytest.raises(ImportError) as e:
        _lib._check_versions(raw, expected_abi=_lib.DISTRO_ABI_VERSION + 98)
    text = str(e.value)
    assert f"ABI version {_lib.DISTRO_ABI_VERSION + 98}" in text
    assert f"ABI version {raw.distro_abi_version()}" in text


def test_monkeypatched_expected_abi_fails_the_whole_load(monkeypatch):
    monkeypatch.setattr(_lib, "DISTRO_ABI_VERSION", 77)
    with pytest.raises(ImportError) as e:
        _lib.load()
    assert "77" in str(e.value) and f"ABI version {_lib.lib.distro_abi_version()}" in str(e.value)


def test_major_version_mismatch(monkeypatch):
    monkeypatch.setattr(_lib, "DISTRO_VERSION_MAJOR", 5)
    with pytest.raises(ImportError) as e:
        _lib.load()
    text = str(e.value)
    assert "major version 5" in text and libdistro.library_version() in text


def test_matching_versions_pass(raw):
    _lib._check_versions(raw)  # no exception


def test_candidates_order():
    assert _lib._candidates({"LIBDISTRO_LIBRARY": "/opt/x/libdistro.so.1"}) == [
        ("$LIBDISTRO_LIBRARY", "/opt/x/libdistro.so.1")
    ]
    found = _lib._candidates({})
    assert found[0][1] == str((REPO_ROOT / "build" / "lib" / "libdistro.so.1").resolve())
    assert "find_library" in found[1][0]


def test_nothing_found_lists_every_place():
    with pytest.raises(ImportError) as e:
        _lib._open([("first", "/nonexistent/a/libdistro.so.1"), ("second", ""), ("third", "/nonexistent/b.so")])
    text = str(e.value)
    assert "/nonexistent/a/libdistro.so.1" in text and "second: nothing found" in text
    assert "/nonexistent/b.so" in text and "LIBDISTRO_LIBRARY" in text


def test_import_with_a_bad_env_path_fails_clearly(tmp_path):
    env = dict(os.environ, LIBDISTRO_LIBRARY=str(tmp_path / "missing" / "libdistro.so.1"),
               PYTHONPATH=str(PACKAGE_ROOT), PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-c", "import libdistro"], env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and str(tmp_path / "missing" / "libdistro.so.1") in r.stderr


def test_a_library_without_the_functions_is_refused():
    with pytest.raises(ImportError) as e:
        _lib._declare(ctypes.CDLL(None), "the python executable")
    assert "distro_optimizer_compress" in str(e.value)


# -- parity with the header ------------------------------------------------------------------------

needs_header = pytest.mark.skipif(not HEADER.exists(), reason=f"{HEADER} not present")


def _header_text():
    return re.sub(r"/\*.*?\*/", " ", HEADER.read_text(), flags=re.S)


@needs_header
def test_every_header_function_has_a_prototype():
    declared = set(re.findall(r"DISTRO_API\b[^;{]*?\b(distro_\w+)\s*\(", _header_text()))
    assert len(declared) >= 20
    assert declared == {name for name, _, _ in _lib.PROTOTYPES}
    for name in declared:
        fn = getattr(_lib.lib, name)
        assert fn.argtypes is not None, name


@needs_header
def test_header_constants_are_copied():
    text = _header_text()
    constants = {}
    for name, value in re.findall(r"#define\s+(DISTRO_\w+)[ \t]+([^\n\\]+)\n", text):
        value = value.strip()
        if m := re.fullmatch(r"-?\d+", value):
            constants[name] = int(value)
        elif m := re.fullmatch(r'"(.*)"', value):
            constants[name] = m.group(1)
        elif m := re.fullmatch(r"\(1u << (\d+)\)", value):
            constants[name] = 1 << int(m.group(1))
    for name, value in re.findall(r"\b(DISTRO_[A-Z0-9_]+)\s*=\s*(\d+)", text):
        constants[name] = int(value)
    assert "DISTRO_ABI_VERSION" in constants and "DISTRO_ERR_INTERNAL" in constants
    assert "DISTRO_DEVICE_OPTIMIZER" in constants and "DISTRO_MESSAGE_UPDATE" in constants
    for name, value in constants.items():
        assert getattr(_lib, name) == value, name


STRUCTS = {
    "distro_device_info": _lib.DeviceInfo,
    "distro_optimizer_options": _lib.OptimizerOptions,
    "distro_optimizer_stats": _lib.OptimizerStats,
    "distro_message_info": _lib.MessageInfo,
    "distro_trainer_options": _lib.TrainerOptions,
    "distro_step_stats": _lib.StepStats,
    "distro_trainer_info": _lib.TrainerInfo,
}


@needs_header
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_struct_layouts_and_init_macros_match_c(tmp_path):
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "distro/distro.h"', "int main(void) {"]
    for cname, cls in STRUCTS.items():
        lines.append(f'printf("{cname} sizeof %zu\\n", sizeof({cname}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{cname} {field} %zu\\n", offsetof({cname}, {field}));')
    lines += [
        "distro_optimizer_options o = DISTRO_OPTIMIZER_OPTIONS_INIT;",
        'printf("init %u %u %.17g %d %u\\n", o.chunk, o.topk, (double)o.decay, o.value_mode, o.threads);',
    ]
    # DISTRO_TRAINER_OPTIONS_INIT: the NULL strings, then every other field as a double.
    lines.append("{ distro_trainer_options t = DISTRO_TRAINER_OPTIONS_INIT;")
    lines.append('printf("trainer_strings %zu %d %d %d\\n", t.struct_size, t.preset == NULL, t.data == NULL, '
                 "t.devices == NULL);")
    for field in _lib.TrainerOptions.DEFAULTS:
        lines.append(f'printf("trainer_init {field} %.17g\\n", (double)t.{field});')
    lines += ["}", "return 0; }"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-I", str(HEADER.parent.parent), str(src), "-o", str(exe)],
                   check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    got = {tuple(line.split()[:2]): line.split()[2:] for line in out}
    for cname, cls in STRUCTS.items():
        assert int(got[(cname, "sizeof")][0]) == ctypes.sizeof(cls), cname
        for field, _ in cls._fields_:
            assert int(got[(cname, field)][0]) == getattr(cls, field).offset, (cname, field)
    trainer = _lib.TrainerOptions.new()
    for line in out:
        words = line.split()
        if words[0] == "trainer_strings":
            assert int(words[1]) == trainer.struct_size == ctypes.sizeof(_lib.TrainerOptions)
            assert words[2:] == ["1", "1", "1"]
            assert trainer.preset is None and trainer.data is None and trainer.devices is None
        elif words[0] == "trainer_init":
            field, value = words[1], float(words[2])
            assert getattr(trainer, field) == value, field
    assert {line.split()[1] for line in out if line.startswith("trainer_init")} == set(_lib.TrainerOptions.DEFAULTS)
    # Every field but struct_size and the strings has a default.
    assert set(_lib.TrainerOptions.DEFAULTS) == {f for f, _ in _lib.TrainerOptions._fields_} - {
        "struct_size", "preset", "data", "devices"}
    init = next(line.split() for line in out if line.startswith("init "))
    assert init[0] == "init"
    o = _lib.OptimizerOptions.new()
    assert o.struct_size == ctypes.sizeof(_lib.OptimizerOptions)
    assert (o.chunk, o.topk, o.value_mode, o.threads) == (int(init[1]), int(init[2]), int(init[4]), int(init[5]))
    assert o.decay == float(init[3])
