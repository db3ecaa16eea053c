"""``%remote connect ssh:pi1 ssh:pi2`` (several machines at once) and a group of ssh targets,
against a real sshd on loopback. ``pi1``.. are ssh host aliases (an ssh config that a wrapper
``ssh`` first on PATH passes with -F); the far side finds this tree's remote_kernel through
the sshd's ForceCommand and SetEnv."""

from __future__ import annotations

import getpass
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from tests.conftest import ROOT
from tests.hardening.test_ssh import SSHD, Sshd

pytestmark = [
    pytest.mark.serial,  # a real sshd: outside the parallel step
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.exists(SSHD) or not os.path.exists("/usr/bin/ssh"),
                       reason="openssh-server and openssh-client are needed"),
]


@pytest.fixture
def aliases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sshd]:
    (tmp_path / "sshd").mkdir()
    # The far side runs this interpreter and this tree whatever the login shell sets up.
    sshd = Sshd(tmp_path / "sshd", extra_config=[
        f"SetEnv PYTHONPATH={ROOT}",
        f"ForceCommand {sys.executable} -m remote_kernel serve --stdio --classic"])
    config = tmp_path / "ssh_config"
    config.write_text(f"Host pi1 pi2 pi3\n  HostName 127.0.0.1\n  Port {sshd.port}\n"
                      f"  User {getpass.getuser()}\n  IdentityFile {sshd.identity}\n"
                      "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                      "  LogLevel ERROR\n")
    wrapper = tmp_path / "bin" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {config} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    yield sshd
    sshd.stop()


def test_several_ssh_targets_connect_at_once_and_group(aliases: Sshd,
                                                       capsys: pytest.CaptureFixture) -> None:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "remote_kernel")
    try:
        shell.run_line_magic("remote", "connect ssh:pi1 ssh:pi2")
        out = capsys.readouterr().out
        assert "connected to pi1 (ssh:pi1" in out and "connected to pi2 (ssh:pi2" in out
        pids = {name: shell.user_ns[name].eval("__import__('os').getpid()")
                for name in ("pi1", "pi2")}
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        # A group whose members are partly new ssh targets: those connect first.
        shell.run_line_magic("remote", "group pis pi1 pi2 ssh:pi3")
        assert "group pis: pi1 pi2 pi3" in capsys.readouterr().out
        result = shell.run_cell("%%remote pis -o pid\nimport os\npid = os.getpid()\n")
        assert result.error_in_exec is None, result.error_in_exec
        gathered = shell.user_ns["pid"]
        assert list(gathered) == ["pi1", "pi2", "pi3"]
        assert {gathered["pi1"], gathered["pi2"]} == set(pids.values())
        assert len(set(gathered.values())) == 3
        labelled = capsys.readouterr().out
        assert labelled == ""  # nothing printed: -o only
    finally:
        shell.run_line_magic("unload_ext", "remote_kernel")
