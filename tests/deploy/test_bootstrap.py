"""Zero-deploy's bootstrap (net/deploy.py BOOTSTRAP) run as the host runs it, ``python3 -I -c
BOOTSTRAP NAME SHA256 SIZE ARGS...``, with HOME in a temporary folder: the cache is a private
folder of the user's, and the bytes run are the bytes whose hash was checked."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from remote_kernel import __version__
from remote_kernel.net import bundle, deploy

pytestmark = pytest.mark.timeout(120)

NAME = "0.0-test.pyz"
SYSTEM_PYTHON = "/usr/bin/python3"
OTHER_UID = 65534  # nobody
# A zipapp that reports its arguments; "swap OLD NEW" replaces its own cached file, then
# imports a module from its archive (zipimport reads the archive again for it).
MAIN = """\
import os, sys
print("ran", sys.argv[1:], flush=True)
if sys.argv[1:2] == ["swap"]:
    os.replace(sys.argv[2], sys.argv[3])
    import later
    print("later", later.WHO)
"""
root_only = pytest.mark.skipif(os.getuid() != 0, reason="a file of another user needs root")


def _zipapp(who: str) -> bytes:
    """Two archives of the same layout (stored, same lengths) differ only in later.WHO."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, text in (("__main__.py", MAIN), ("later.py", f"WHO = {who!r}\n")):
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), text)
    return out.getvalue()


GOOD = _zipapp("good")
EVIL = _zipapp("evil")


def _bootstrap(home: Path, payload: bytes = GOOD, *args: str, python: str = sys.executable,
               name: str = NAME) -> subprocess.CompletedProcess[str]:
    """Run the bootstrap with ``payload`` as the bundle it wants (sent when it asks)."""
    argv = [python, "-I", "-c", deploy.BOOTSTRAP, name, hashlib.sha256(payload).hexdigest(),
            str(len(payload)), *(args or ("ARG",))]
    done = subprocess.run(argv, input=payload, capture_output=True, timeout=30,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    return subprocess.CompletedProcess(argv, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


def _cache(home: Path) -> Path:
    return home / ".cache" / "remote-kernel"


def _planted(home: Path, mode: int = 0o700) -> Path:
    """An intact bundle already in the cache, in a folder of ``mode``."""
    cache = _cache(home)
    cache.mkdir(parents=True)
    cache.chmod(mode)
    (cache / NAME).write_bytes(GOOD)
    (cache / NAME).chmod(0o600)
    return cache


def _assert_private_copy(home: Path) -> None:
    cache = _cache(home)
    assert stat.S_IMODE(cache.lstat().st_mode) == 0o700 and cache.is_dir()
    info = (cache / NAME).lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()
    assert (cache / NAME).read_bytes() == GOOD
    assert os.listdir(cache) == [NAME]  # no temporary left


def _assert_refused(done: subprocess.CompletedProcess[str], what: str) -> None:
    assert done.returncode != 0
    assert "ran" not in done.stdout and "rk-send" not in done.stdout
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, done.stderr
    assert line.startswith("remote-kernel: refusing the cache ") and what in line, line


def test_an_honest_cache_is_made_private_and_then_reused(tmp_path: Path) -> None:
    first = _bootstrap(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["rk-send", "ran ['ARG']"]
    assert stat.S_IMODE((tmp_path / ".cache").stat().st_mode) == 0o700
    _assert_private_copy(tmp_path)
    before = (_cache(tmp_path) / NAME).stat().st_mtime_ns
    again = _bootstrap(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["ran ['ARG']"]  # not sent again
    assert (_cache(tmp_path) / NAME).stat().st_mtime_ns == before


def test_the_real_bundle_runs_from_its_checked_descriptor(tmp_path: Path) -> None:
    """The system python (no msgpack) runs the bundle, its vendored msgpack included."""
    python = SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON) else sys.executable
    data, _ = bundle.cached()
    for sent in (True, False):
        done = _bootstrap(tmp_path, data, "version", python=python, name=deploy.cached_name())
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("rk-send\n") is sent
        assert done.stdout.splitlines()[-1] == __version__


def test_a_world_writable_cache_folder_is_made_private(tmp_path: Path) -> None:
    _planted(tmp_path, 0o777)
    done = _bootstrap(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ran ['ARG']"]
    _assert_private_copy(tmp_path)


def test_a_symlinked_cache_folder_is_refused_and_clean_removes_only_the_link(
        tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    (home / ".cache").mkdir(parents=True)
    elsewhere.mkdir(mode=0o777)
    elsewhere.chmod(0o777)
    (elsewhere / NAME).write_bytes(GOOD)  # intact: the old bootstrap ran it
    _cache(home).symlink_to(elsewhere)
    _assert_refused(_bootstrap(home), "(a symbolic link)")
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o777  # not touched
    cleaned = subprocess.run([sys.executable, "-I", "-c", deploy.CLEAN], capture_output=True,
                             text=True, timeout=30, env={"HOME": str(home)})
    assert cleaned.returncode == 0 and "a symbolic link" in cleaned.stdout, cleaned
    assert not os.path.lexists(_cache(home)) and (elsewhere / NAME).exists()
    done = _bootstrap(home)
    assert done.stdout.splitlines() == ["rk-send", "ran ['ARG']"]
    _assert_private_copy(home)


@root_only
def test_a_cache_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    cache = _planted(tmp_path)
    os.chown(cache, OTHER_UID, OTHER_UID)
    _assert_refused(_bootstrap(tmp_path), "(another user's)")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700 and cache.stat().st_uid == OTHER_UID


def test_a_cache_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".cache").mkdir()
    _cache(tmp_path).write_bytes(GOOD)
    _assert_refused(_bootstrap(tmp_path), "Not a directory")


def test_the_bytes_run_are_the_bytes_checked(tmp_path: Path) -> None:
    """The cached file is replaced after the check (here by the bundle itself, the latest
    moment): what runs, its later imports included, is still the file that was hashed."""
    cache = _planted(tmp_path)
    evil = cache / "evil.pyz"
    evil.write_bytes(EVIL)
    done = _bootstrap(tmp_path, GOOD, "swap", str(evil), str(cache / NAME))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "later good"
    assert (cache / NAME).read_bytes() == EVIL  # the swap happened


def test_a_fifo_at_the_bundles_path_is_replaced_without_hanging(tmp_path: Path) -> None:
    cache = _planted(tmp_path)
    (cache / NAME).unlink()
    os.mkfifo(cache / NAME)
    done = _bootstrap(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["rk-send", "ran ['ARG']"]
    _assert_private_copy(tmp_path)


def _corrupt(cache: Path, elsewhere: Path) -> None:
    data = bytearray(GOOD)
    data[len(data) // 2] ^= 0xFF
    (cache / NAME).write_bytes(bytes(data))


def _writable_by_others(cache: Path, elsewhere: Path) -> None:
    (cache / NAME).chmod(0o666)


def _a_link_to_an_intact_copy(cache: Path, elsewhere: Path) -> None:
    (elsewhere / NAME).write_bytes(GOOD)
    (cache / NAME).unlink()
    (cache / NAME).symlink_to(elsewhere / NAME)


def _another_users(cache: Path, elsewhere: Path) -> None:
    os.chown(cache / NAME, OTHER_UID, OTHER_UID)


@pytest.mark.parametrize("spoil", [
    _corrupt, _writable_by_others, _a_link_to_an_intact_copy,
    pytest.param(_another_users, marks=root_only)])
def test_a_cached_file_not_checked_private_and_intact_is_sent_again(tmp_path: Path,
                                                                    spoil: object) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    spoil(_planted(home), elsewhere)  # type: ignore[operator]
    done = _bootstrap(home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["rk-send", "ran ['ARG']"]
    _assert_private_copy(home)
    assert [p.name for p in elsewhere.iterdir()] in ([], [NAME])  # a link's target untouched


def test_concurrent_first_deploys_each_run_and_leave_one_file(tmp_path: Path) -> None:
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda _: _bootstrap(tmp_path), range(3)))
    for done in runs:
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "ran ['ARG']"
    _assert_private_copy(tmp_path)
