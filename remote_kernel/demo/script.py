"""``remote-kernel demo``: a short scripted session against a local classic server,
printing each step, for a first look without Jupyter."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time


def _step(title: str, code: str, value: object) -> None:
    print(f"  {title:<38} {code:<44} -> {value!r}")


def run() -> int:
    import remote_kernel as rk

    token = secrets.token_urlsafe(16)
    name = f"demo-{os.getpid()}"
    env = dict(os.environ)
    token_file = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rk-demo-{os.getpid()}.token")
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    print("Starting a classic server:  remote-kernel serve --classic --name", name)
    server = subprocess.Popen(
        [sys.executable, "-m", "remote_kernel", "serve", "--classic", "--name", name,
         "--token-file", token_file],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        for _ in range(3):
            print("  server says:", server.stdout.readline().rstrip())
        conn = rk.connect(name)
        print(f"\nConnected to {conn.peer}; round trip {conn.ping() * 1e6:.0f} µs\n")
        _step("remote pid differs from ours", "conn.modules.os.getpid()",
              (conn.modules.os.getpid(), os.getpid()))
        _step("evaluate on the server", "conn.eval('2 ** 100')", conn.eval("2 ** 100"))
        conn.execute("data = {'volts': [1.0, 1.5, 2.25]}")
        data = conn.namespace["data"]
        _step("a remote dict is a netref", "type(data).__name__", type(data).__name__)
        _step("... that behaves like a dict", "isinstance(data, dict)", isinstance(data, dict))
        data["volts"].append(3.0)
        _step("remote list, changed in place", "len(data['volts'])", len(data["volts"]))
        _step("a copy by value", "rk.obtain(data)", rk.obtain(data))

        def progress(step: int) -> str:
            return f"client saw step {step}"

        conn.execute("def run_steps(cb, n):\n    return [cb(i) for i in range(n)]")
        _step("the server calls back into us", "conn.namespace['run_steps'](progress, 2)",
              conn.namespace["run_steps"](progress, 2))
        try:
            conn.eval("1 / 0")
        except ZeroDivisionError as exc:
            _step("remote exceptions keep their type", "conn.eval('1 / 0')",
                  f"{type(exc).__name__}: {exc} (from {exc.peer})")
        async_sleep = rk.async_(conn.modules.time.sleep)
        start = time.perf_counter()
        results = [async_sleep(0.2) for _ in range(3)]
        for result in results:
            result.wait(5)
        _step("async calls", "rk.async_(time.sleep)(0.2) x3",
              f"{time.perf_counter() - start:.2f} s")
        conn.close()
        print("\nDone: connection closed.")
        return 0
    finally:
        server.terminate()
        server.wait(5)
        os.unlink(token_file)
