"""``make demo``: the simulated bench, the proxy kernelspec and JupyterLab on notebooks/.

Besides the ``demo`` bench it starts four more, ``bench1`` .. ``bench4`` (each its own
process, like four lab PCs) for notebook 06; where discovery is installed they advertise
themselves on this machine's loopback only (``--advertise --interface 127.0.0.1``).

    python -m remote_kernel.demo.launcher            # JupyterLab; Ctrl-C stops everything
    python -m remote_kernel.demo.launcher --check    # headless: execute every notebook

Everything it creates (runtime directory with the connection file, the kernelspec) is
removed on exit.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_NAME = "demo"
BENCHES = ("bench1", "bench2", "bench3", "bench4")  # notebook 06: many instruments at once
KERNEL_NAME = "remote-demo"
CELL_TIMEOUT = 180


def _can_advertise() -> bool:
    try:
        return importlib.util.find_spec("remote_kernel.net.discovery") is not None
    except ImportError:
        return False


def _start_servers(env: dict[str, str], runtime: Path) -> list[subprocess.Popen]:
    """The demo bench and the four of notebook 06, started at once; waits for their files."""
    advertise = ["--advertise", "--interface", "127.0.0.1"] if _can_advertise() else []
    servers: dict[str, subprocess.Popen] = {}
    for name in (DEMO_NAME, *BENCHES):
        servers[name] = subprocess.Popen(
            [sys.executable, "-m", "remote_kernel", "serve", "--service",
             "remote_kernel.demo.bench:Lab", "--name", name,
             *(advertise if name in BENCHES else [])], env=env,
            # the demo bench says where it is; the four others would only repeat it
            stdout=subprocess.DEVNULL if name in BENCHES else None)
    deadline = time.monotonic() + 30
    for name, server in servers.items():
        path = runtime / f"remote-kernel-{name}.json"
        while not path.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                _stop_servers(list(servers.values()))
                raise SystemExit(f"the {name} server did not start")
            time.sleep(0.05)
    return list(servers.values())


def _stop_servers(servers: list[subprocess.Popen]) -> None:
    for server in servers:
        if server.poll() is None:
            server.terminate()
    for server in servers:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def _install_kernelspec(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "remote_kernel", "kernel", "install", "--name",
                    KERNEL_NAME, "--target", DEMO_NAME, "--display-name", "Python on demo",
                    "--sys-prefix", "--trust"],  # the demo's own local bench: trusted
                   env=env, check=True)


def _remove_kernelspec(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "remote_kernel", "kernel", "remove", KERNEL_NAME],
                   env=env, check=False, capture_output=True)


def check_notebooks(notebooks: Path, env: dict[str, str]) -> int:
    """Execute each notebook with nbclient; the number of notebooks that failed."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    os.environ.update(env)
    failures = 0
    for path in sorted(notebooks.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        start = time.monotonic()
        client = NotebookClient(notebook, timeout=CELL_TIMEOUT, resources={
            "metadata": {"path": str(notebooks)}})
        try:
            client.execute()
        except CellExecutionError as exc:
            failures += 1
            print(f"FAILED {path.name}: {str(exc)[:2000]}", flush=True)
            continue
        except Exception as exc:  # kernel died, timeout
            failures += 1
            print(f"FAILED {path.name}: {type(exc).__name__}: {exc}", flush=True)
            continue
        print(f"ok     {path.name} ({time.monotonic() - start:.1f} s)", flush=True)
    return failures


def run_lab(notebooks: Path, env: dict[str, str], port: int) -> None:
    token = secrets.token_hex(16)
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1",
            f"--port={port}", f"--ServerApp.token={token}", f"--notebook-dir={notebooks}"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log_path = Path(env["JUPYTER_RUNTIME_DIR"]) / "jupyterlab.log"
    with open(log_path, "w") as log:  # a file, not a pipe nobody reads (it would fill up)
        lab = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/lab/tree/02-instrument-control.ipynb?token={token}"
    print(f"\nJupyterLab: {url}\n(Ctrl-C stops JupyterLab and the demo servers)\n", flush=True)
    try:
        code = lab.wait()
        if code:
            print(f"JupyterLab exited with {code}:\n{log_path.read_text()[-3000:]}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(15)
        except subprocess.TimeoutExpired:
            lab.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="run headless: execute every notebook and exit")
    parser.add_argument("--port", type=int, default=8888, help="JupyterLab port")
    parser.add_argument("--notebooks", default=str(Path(__file__).resolve().parents[2] /
                                                   "notebooks"))
    args = parser.parse_args(argv)
    notebooks = Path(args.notebooks).resolve()
    runtime = Path(tempfile.mkdtemp(prefix="rk-demo-"))
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime), PYTHONUNBUFFERED="1")
    servers = _start_servers(env, runtime)
    try:
        _install_kernelspec(env)
        if args.check:
            failures = check_notebooks(notebooks, env)
            print(f"{failures} notebook(s) failed" if failures else "all notebooks ran",
                  flush=True)
            return 1 if failures else 0
        run_lab(notebooks, env, args.port)
        return 0
    finally:
        _remove_kernelspec(env)
        _stop_servers(servers)
        shutil.rmtree(runtime, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
