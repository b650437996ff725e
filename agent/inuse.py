"""Version and dataset dirs a running bench or eval reads from, and prunes that leave them be.

Why: a bench or eval verifies its bundle under the root lock, then measures for minutes
without it (so pushes and polls are not held up). A push of other bundles meanwhile prunes
old versions; before this, it could delete the very dir a bench was about to load its model
from (the bench failed with a bare "No such file", or, between two thread counts, half its
results were missing). Now the reader takes a shared ``flock`` on the dir itself while it
still holds the root lock, and a prune (always under the root lock) skips a dir someone
reads: it is an orphan the next prune removes.

Why a flock: it ends with the process that holds it, so a killed bench leaves nothing to
clean up and nothing to time out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from typing import Iterator

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def reading(path: str) -> Iterator[None]:
    """Hold ``path`` (a dir) against prunes for the duration. Take it under the root lock,
    right after checking the dir: a prune cannot come in between."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError as exc:  # a file system without flock (some NFS roots): as before
            sys.stderr.write("edgefleet-agent: cannot hold %s against prunes (%s)\n"
                             % (path, exc))
        yield
    finally:
        os.close(fd)  # closing releases the flock


def in_use(path: str) -> bool:
    """Whether a bench or eval holds ``path`` (``reading``). A dir that cannot be opened is
    not in use (a prune's remove then says what is wrong)."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no flock on this file system: nobody can hold it (reading says so)
    finally:
        os.close(fd)
    return False
