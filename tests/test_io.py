"""textebm.io: atomic writes, and the targets that must not be replaced by a regular file."""

from __future__ import annotations

import os
import stat

from textebm.io import atomic_write_text


def test_a_symlink_is_followed_and_stays_a_link(tmp_path):
    (tmp_path / "target.txt").write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to("target.txt")
    atomic_write_text(link, "new\n")
    assert link.is_symlink()
    assert (tmp_path / "target.txt").read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "target.txt"]  # no temporary file left


def test_a_fifo_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # A reader opened without blocking: the writer's open then succeeds at once, and the few bytes
    # wait in the pipe's buffer, so the test cannot hang whatever the writer does.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        atomic_write_text(fifo, "through the pipe\n")
        assert os.read(reader, 100) == b"through the pipe\n"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
