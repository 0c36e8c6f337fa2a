"""textebm.io: atomic writes, and the targets that must not be replaced by a regular file."""

from __future__ import annotations

import os
import stat

import pytest

from textebm.errors import UserError
from textebm.io import atomic_write_text, check_writable


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


def test_a_pipe_named_through_proc_as_dev_stdout_is_written_through(tmp_path):
    reader, writer = os.pipe()
    try:
        atomic_write_text(f"/proc/self/fd/{writer}", "to the pipe\n")  # /dev/stdout is a link to /proc/self/fd/1
        assert os.read(reader, 100) == b"to the pipe\n"
    finally:
        os.close(reader)
        os.close(writer)


def test_check_writable_says_why_a_path_cannot_be_written_and_leaves_nothing(tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("keep\n")
    for path, folder, reason in ((tmp_path, False, "it is a folder"), (file, True, "it is not a folder"),
                                 (file / "a" / "b.txt", False, f"{file} is not a folder"),
                                 (file / "run", True, f"{file} is not a folder")):
        with pytest.raises(UserError) as err:
            check_writable(path, folder)
        assert str(err.value) == f"cannot write {path}: {reason}"
    for path, folder in ((tmp_path / "file.txt", False), (tmp_path / "new" / "out.txt", False),
                         (tmp_path / "new" / "run", True), (tmp_path, True)):
        assert check_writable(path, folder) == path
    os.mkfifo(tmp_path / "fifo")
    assert check_writable(tmp_path / "fifo") == tmp_path / "fifo"
    (tmp_path / "loop").symlink_to("loop")  # a folder to fill behind a link that resolves to nothing
    with pytest.raises(UserError, match=f"^cannot write {tmp_path / 'loop'}: it is a link to loop, which does not"):
        check_writable(tmp_path / "loop", folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "file.txt", "loop"]  # no probe left, no folder
