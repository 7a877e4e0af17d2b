"""Helpers for the multi-process network tests: run `distro serve` and `distro node` on loopback,
read their logs, and speak raw TLS to the coordinator for the malformed-input cases."""
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "genesis.txt"


def distro_bin():
    path = os.environ.get("DISTRO_BIN")
    if not path:
        raise RuntimeError("set DISTRO_BIN to the distro executable (ctest does)")
    return path


class Proc:
    """A child process whose combined output goes to a log file."""

    def __init__(self, args, log_path, env=None):
        self.args = args
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "wb")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def text(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout):
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{' '.join(self.args[:2])} did not end within {timeout} s; log:\n{self.text()[-4000:]}")

    def running(self):
        return self.p.poll() is None

    def kill9(self):
        if self.running():
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()

    def signal(self, sig):
        self.p.send_signal(sig)

    def close(self):
        self.kill9()
        self.log.close()


def write_config(folder, tokens, **settings):
    cfg = {"preset": "nano", "data": str(DATA), "steps": 20, "batch": 2, "seq": 64, "seed": 1,
           "nodes_per_round": 4, "listen": "127.0.0.1:0", "state_dir": str(Path(folder) / "state"),
           "fill_wait_s": 1.0, "round_deadline_s": 30, "tokens": tokens}
    cfg.update(settings)
    path = Path(folder) / "run.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def start_serve(folder, config, listen=None, tag="serve"):
    port_file = Path(folder) / f"{tag}.port"
    if port_file.exists():
        port_file.unlink()
    args = [distro_bin(), "serve", "--config", str(config), "--port-file", str(port_file)]
    if listen:
        args += ["--listen", listen]
    p = Proc(args, Path(folder) / f"{tag}.log")
    deadline = time.time() + 60
    while not port_file.exists():
        if not p.running() or time.time() > deadline:
            raise AssertionError("the coordinator did not start:\n" + p.text())
        time.sleep(0.05)
    port, fingerprint = port_file.read_text().split()
    return p, int(port), fingerprint


def start_node(folder, name, port, token, *extra):
    args = [distro_bin(), "node", "--coordinator", f"127.0.0.1:{port}", "--token", token, "--threads", "1",
            "--retry-min", "0.2", "--retry-max", "1"] + list(extra)
    return Proc(args, Path(folder) / f"{name}.log")


STEP_RE = re.compile(r"serve step: step (\d+)/")


def serve_step(text):
    steps = [int(m.group(1)) for m in STEP_RE.finditer(text)]
    return max(steps) if steps else 0


def wait_for(predicate, timeout, what, log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + ("\n" + log()[-4000:] if log else ""))


def wait_step(proc, step, timeout=120):
    wait_for(lambda: serve_step(proc.text()) >= step, timeout, f"step {step}", proc.text)


FINAL_RE = re.compile(r"distro (serve|node): (\w+) at step (\d+)(?: of \d+)?, hash ([0-9a-f]{16})")


def final(text):
    """(state, step, hash) of the last line a serve or node process printed."""
    found = FINAL_RE.findall(text)
    if not found:
        raise AssertionError("no final line in:\n" + text[-4000:])
    _, state, step, h = found[-1]
    return state, int(step), int(h, 16)


def tls_exchange(port, data, read_timeout=10.0):
    """Connects over TLS 1.3 (no verification), sends data, returns what the peer sent until it
    closed the connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(data)
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except (ssl.SSLError, ConnectionResetError, socket.timeout, OSError):
                pass
    return got


def frame(kind, body):
    return struct.pack("<IB", len(body), kind) + body


def error_reasons(data):
    """The reasons of the error frames (kind 13) in a byte stream from the coordinator."""
    out = []
    while len(data) >= 5:
        n, kind = struct.unpack_from("<IB", data)
        body = data[5:5 + n]
        data = data[5 + n:]
        if kind == 13 and len(body) >= 4:
            ln = struct.unpack_from("<H", body, 2)[0]
            out.append(body[4:4 + ln].decode(errors="replace"))
    return out
