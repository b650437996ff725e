"""The verification cache on real files: what it trusts, what it persists, what it forgets."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from agent.hashcache import HashCache, Verifier, cache_key

HOUR_NS = 3600 * 10**9


def aged_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    old = time.time_ns() - HOUR_NS
    os.utime(path, ns=(old, old))
    return path


def verifier(tmp_path: Path) -> tuple[Verifier, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return Verifier(HashCache(str(tmp_path / "cache" / "hashes.json")), events.append), events


def test_unchanged_file_is_trusted_and_survives_a_restart(tmp_path: Path) -> None:
    f = aged_file(tmp_path / "blob", b"abc" * 1000)
    v, events = verifier(tmp_path)
    assert v.sha256(str(f), "blob") == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert v.hashed_files == 1 and events[-1]["done"] == events[-1]["total"] == 3000
    v.cache.save()
    on_disk = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    st = f.stat()
    assert on_disk == {cache_key(st): [3000, st.st_mtime_ns, st.st_ctime_ns,
                                       hashlib.sha256(b"abc" * 1000).hexdigest()]}

    fresh, fresh_events = verifier(tmp_path)
    assert fresh.sha256(str(f), "blob") == on_disk[cache_key(st)][3]
    assert fresh.hashed_files == 0 and fresh_events == []

    link = tmp_path / "hardlink"
    before = f.stat()
    os.link(f, link)  # same inode, new ctime: trusted once the link is carried
    fresh.cache.carry(before, f.stat())
    assert fresh.sha256(str(link), "link") == on_disk[cache_key(st)][3]
    assert fresh.hashed_files == 0
    fresh.cache.save()
    again, _ = verifier(tmp_path)  # the carried entry was persisted (its mtime is old)
    assert again.sha256(str(link), "link") == on_disk[cache_key(st)][3]
    assert again.hashed_files == 0


def test_a_rewrite_with_size_and_mtime_put_back_is_hashed_again(tmp_path: Path) -> None:
    """Bit rot as a test can make it: one byte flipped, the mtime restored with os.utime. Only
    the ctime (which utime cannot set) tells, and the cache keys on it."""
    f = aged_file(tmp_path / "blob", b"0123456789" * 100)
    v, _ = verifier(tmp_path)
    good = v.sha256(str(f), "blob")
    v.cache.save()
    before = f.stat()
    data = bytearray(f.read_bytes())
    data[500] ^= 0x01
    f.write_bytes(bytes(data))
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = f.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns
    later, _ = verifier(tmp_path)
    assert later.sha256(str(f), "blob") == hashlib.sha256(bytes(data)).hexdigest() != good
    assert later.hashed_files == 1


def test_entries_of_an_older_agent_without_ctime_are_hashed_again(tmp_path: Path) -> None:
    f = aged_file(tmp_path / "blob", b"old format")
    st = f.stat()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "hashes.json").write_text(json.dumps(
        {cache_key(st): [st.st_size, st.st_mtime_ns, "0" * 64]}))
    v, _ = verifier(tmp_path)
    assert v.sha256(str(f), "blob") == hashlib.sha256(b"old format").hexdigest()
    assert v.hashed_files == 1


def test_size_or_mtime_change_forces_a_rehash(tmp_path: Path) -> None:
    f = aged_file(tmp_path / "blob", b"0123456789")
    v, _ = verifier(tmp_path)
    v.sha256(str(f), "blob")
    before = f.stat()
    f.write_bytes(b"0123456789X")  # size changes; put the old mtime back
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert v.sha256(str(f), "blob") == hashlib.sha256(b"0123456789X").hexdigest()
    assert v.hashed_files == 2

    f.write_bytes(b"9123456789X")  # same size, new mtime
    assert v.sha256(str(f), "blob") == hashlib.sha256(b"9123456789X").hexdigest()
    assert v.hashed_files == 3


def test_fresh_files_are_trusted_in_memory_but_not_persisted(tmp_path: Path) -> None:
    f = tmp_path / "just-uploaded"
    f.write_bytes(b"new")  # mtime = now: a same-size rewrite could keep this mtime
    v, _ = verifier(tmp_path)
    v.sha256(str(f), "x")
    v.sha256(str(f), "x")
    assert v.hashed_files == 1  # same command: trusted
    v.cache.save()
    assert not (tmp_path / "cache" / "hashes.json").exists()
    later, _ = verifier(tmp_path)
    later.sha256(str(f), "x")
    assert later.hashed_files == 1  # next command: hashed again


def test_forget_retain_and_a_corrupt_cache_file(tmp_path: Path) -> None:
    a = aged_file(tmp_path / "a", b"a")
    b = aged_file(tmp_path / "b", b"b")
    v, _ = verifier(tmp_path)
    v.sha256(str(a), "a")
    v.sha256(str(b), "b")
    v.cache.forget(str(a))
    v.cache.retain([cache_key(b.stat()), "0:0"])
    v.cache.save()
    on_disk = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert list(on_disk) == [cache_key(b.stat())]

    (tmp_path / "cache" / "hashes.json").write_text("{not json")
    broken, _ = verifier(tmp_path)
    assert broken.cache.entries == {}
    assert broken.sha256(str(b), "b") == hashlib.sha256(b"b").hexdigest()


def test_check_reports_why(tmp_path: Path) -> None:
    f = aged_file(tmp_path / "f", b"hello")
    v, _ = verifier(tmp_path)
    good = hashlib.sha256(b"hello").hexdigest()
    assert v.check(str(f), good, 5, "f") is None
    assert v.check(str(f), good, 6, "f") == "size 5, expected 6"
    assert v.check(str(f), "0" * 64, 5, "f").startswith("sha256 " + good)
    assert v.check(str(tmp_path / "nope"), good, 5, "nope") == "missing"
    os.symlink(f, tmp_path / "sym")
    assert v.check(str(tmp_path / "sym"), good, 5, "sym") == "not a regular file"


def test_a_save_keeps_what_another_command_saved_meanwhile(tmp_path: Path) -> None:
    """Two commands read the cache; one (``verify``) drops a rotten model's entry and saves;
    the other (an ``eval`` that started before, hashing its dataset) saves after. The dropped
    entry stays dropped: before, the second save wrote its whole stale table back, and the
    next push, bench and rollback trusted the corrupt model from the cache."""
    model = aged_file(tmp_path / "model", b"m" * 1000)
    sample = aged_file(tmp_path / "sample", b"s" * 1000)
    first, _ = verifier(tmp_path)
    first.sha256(str(model), "model")
    first.cache.save()
    verify_cmd, _ = verifier(tmp_path)
    eval_cmd, _ = verifier(tmp_path)  # read while the model's entry was still there
    verify_cmd.cache.forget(str(model))
    verify_cmd.cache.save()
    eval_cmd.sha256(str(sample), "sample")  # a change of its own, so it saves
    eval_cmd.cache.save()
    on_disk = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert set(on_disk) == {cache_key(sample.stat())}
    later, _ = verifier(tmp_path)
    later.sha256(str(model), "model")
    assert later.hashed_files == 1  # hashed again, not trusted from the cache
