#!/usr/bin/env python3
"""Sender kill -9 -> restart -> the receiver resumes the session, with the CLI.

Usage: cargo build --release -p surelink-cli && python3 scripts/checkpoint_restart.py

Five runs: a 64 MiB random file sent with `send --state` to `recv --state --once`
(default durability); when half of it has arrived the sender gets SIGKILL and is
started again with the same arguments; the time from that start to the
receiver's "resumed by" line (HELLO answered with WATERMARK: the re-sent
messages follow). Checks that the output is identical to the input.
See docs/CHECKPOINTS.md.
"""
import os, subprocess, time, socket, shutil, statistics, tempfile
B = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "surelink")
def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
results = []
for run in range(5):
    d = os.path.join(tempfile.gettempdir(), f"surelink-restart-{os.getpid()}-{run}"); shutil.rmtree(d, ignore_errors=True); os.makedirs(d)
    with open(f"{d}/in.bin", "wb") as f: f.write(os.urandom(64 << 20))
    addr = f"127.0.0.1:{free_port()}"
    recv = subprocess.Popen([B, "recv", "--listen", addr, "--out", f"{d}/out.bin", "--state", f"{d}/rs", "--once"], stderr=subprocess.PIPE, text=True)
    while "listening on" not in recv.stderr.readline(): pass
    send_args = [B, "send", "--to", addr, "--in", f"{d}/in.bin", "--state", f"{d}/ss"]
    send = subprocess.Popen(send_args, stderr=subprocess.DEVNULL)
    while not os.path.exists(f"{d}/out.bin") or os.path.getsize(f"{d}/out.bin") < (32 << 20): time.sleep(0.0005)
    send.kill(); send.wait()
    t0 = time.monotonic()
    send = subprocess.Popen(send_args, stderr=subprocess.DEVNULL)
    while True:
        line = recv.stderr.readline()
        if "resumed by" in line: t1 = time.monotonic(); break
    size = os.path.getsize(f"{d}/out.bin")
    send.wait(); recv.wait()
    ok = open(f"{d}/in.bin","rb").read() == open(f"{d}/out.bin","rb").read()
    results.append((t1 - t0) * 1e3)
    print(f"run {run}: restart -> session resumed (WATERMARK sent) {results[-1]:.1f} ms; identical={ok}")
    shutil.rmtree(d)
print(f"median {statistics.median(results):.1f} ms, min {min(results):.1f}, max {max(results):.1f}")
