"""agent.inuse on a file system without ``flock`` (some NFS roots of netbooted Pis answer
ENOLCK or EBADF): a bench still runs and a prune still prunes, as before the holds existed."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from agent import inuse


def test_a_held_dir_is_in_use_and_then_free(tmp_path: Path) -> None:
    with inuse.reading(str(tmp_path)):
        assert inuse.in_use(str(tmp_path))
    assert not inuse.in_use(str(tmp_path))
    assert not inuse.in_use(str(tmp_path / "gone"))


def test_no_flock_on_the_file_system_holds_nothing_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(inuse.fcntl, "flock", no_locks)
    with inuse.reading(str(tmp_path)):
        assert not inuse.in_use(str(tmp_path))
    assert f"cannot hold {tmp_path} against prunes" in capsys.readouterr().err
