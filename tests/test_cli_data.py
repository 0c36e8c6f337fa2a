"""`textebm data`: the corpus table with checksums, and `--fetch` from a local mirror (never the network)."""

from __future__ import annotations

import hashlib
import json

from textebm.data import corpora


def _mirror(tmp_path, synthetic_splits, monkeypatch, damage: str | None = None):
    """A folder laid out like the PTB mirror (ptb.train.txt, ...) holding the synthetic corpus, whose
    checksums stand in for PTB's own."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for split in corpora.SPLITS:
        path = mirror / f"ptb.{split}.txt"
        path.write_text("\n".join(synthetic_splits[split]) + "\n", encoding="utf-8")
        monkeypatch.setitem(corpora.PTB_SHA256, split, hashlib.sha256(path.read_bytes()).hexdigest())
    if damage:
        with open(mirror / f"ptb.{damage}.txt", "a", encoding="utf-8") as handle:
            handle.write(" one more line \n")
    return mirror


def test_table_reports_present_splits_substitutes_and_checksums(cli, data_folder, tmp_path):
    folder = data_folder(ptb="train valid test", yahoo="valid test", snli="test")
    status, out, err = cli("data", "--data-dir", folder, "--json")
    assert status == 0, err
    report = json.loads(out)
    assert set(report) == {"ptb", "snli", "yahoo"}
    assert all(report["ptb"]["splits"][s]["sha256_ok"] is False for s in corpora.SPLITS)  # not Mikolov's files
    assert report["yahoo"]["splits"]["train"]["path"] is None and "valid" in report["yahoo"]["substitute"]
    assert [s for s, entry in report["snli"]["splits"].items() if entry["path"]] == ["test"]
    status, out, err = cli("data", "--data-dir", folder)
    assert status == 0, err
    assert "yahoo: without train: train on valid" in out and "snli: without train: train on test" in out
    assert "ptb:" not in out  # a complete corpus needs no substitute
    # a file that is present but not the standard one, next to missing ones
    folder = tmp_path / "d" / "ptb"
    folder.mkdir(parents=True)
    (folder / "valid.txt").write_text("a b c\n", encoding="utf-8")
    status, out, err = cli("data", "--data-dir", tmp_path / "d")
    assert status == 0, err
    ptb_row = next(line for line in out.splitlines() if line.startswith("ptb"))
    assert "missing" in ptb_row and "sha256 DIFFERS" in ptb_row


def test_real_corpora_match_their_checksums(cli, real_data_dir):
    """Every split of the real corpora that is present and has a standard checksum matches it."""
    status, out, err = cli("data", "--data-dir", real_data_dir, "--json")
    assert status == 0, err
    report = json.loads(out)
    assert all(report["ptb"]["splits"][s]["sha256_ok"] is True for s in corpora.SPLITS)
    for name, entry in report.items():
        for split, state in entry["splits"].items():
            assert state["sha256_ok"] is not False, f"{name} {split}: {state['path']} is not the standard file"


def test_fetch_ptb_from_a_local_mirror(cli, synthetic_splits, tmp_path, monkeypatch):
    target = tmp_path / "data"
    mirror = _mirror(tmp_path, synthetic_splits, monkeypatch)
    status, out, err = cli("data", "--data-dir", target, "--fetch", "ptb", "--source", mirror)
    assert status == 0, err
    assert sorted(p.name for p in (target / "ptb").iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    assert (target / "ptb" / "train.txt").read_bytes() == (mirror / "ptb.train.txt").read_bytes()
    assert out.startswith(f"ptb: train, valid, test in {target / 'ptb'}\n")
    mib = (mirror / "ptb.train.txt").stat().st_size / 2**20
    assert f"ok ({mib:.1f} MiB, sha256 match)" in out


def test_failed_fetch_is_one_line_and_leaves_no_partial_file(cli, synthetic_splits, tmp_path, monkeypatch,
                                                             one_line_error):
    target = tmp_path / "data"
    mirror = _mirror(tmp_path, synthetic_splits, monkeypatch, damage="valid")
    one_line_error(*cli("data", "--data-dir", target, "--fetch", "ptb", "--source", mirror)[::2], "data",
                   "sha256")
    assert not target.exists()  # neither the good train file nor a partial one, nor the folders made for them
    one_line_error(*cli("data", "--data-dir", target, "--fetch", "ptb", "--source",
                        (tmp_path / "nowhere").as_uri())[::2], "data", "download failed")
    assert not target.exists()


def test_fetch_yahoo_says_what_is_missing(cli, data_folder, tmp_path, one_line_error):
    one_line_error(*cli("data", "--data-dir", tmp_path / "none", "--fetch", "yahoo")[::2], "data",
                   "Yahoo not found", "cannot be downloaded", "train.txt, valid.txt, test.txt")
    partial = data_folder(yahoo="valid test")
    one_line_error(*cli("data", "--data-dir", partial, "--fetch", "yahoo")[::2], "data",
                   "has valid, test but no train", "cannot be downloaded", "--train-split valid")
    complete = data_folder(yahoo="train valid test")
    status, out, err = cli("data", "--data-dir", complete, "--fetch", "yahoo")
    assert status == 0, err
    assert out.startswith(f"yahoo: train, valid, test in {complete / 'yahoo'}\n")


def test_a_source_that_is_neither_a_folder_nor_a_url(cli, tmp_path, one_line_error):
    # it said "unknown url type: '/nonexist/ptb.train.txt'"
    source = tmp_path / "nonexist"
    one_line_error(*cli("data", "--data-dir", tmp_path / "d", "--fetch", "ptb", "--source", source)[::2], "data",
                   f"--source {source}: no such folder (nor a URL")
    assert not (tmp_path / "d").exists()


def test_bad_requests(cli, tmp_path, one_line_error):
    one_line_error(*cli("data", "--data-dir", tmp_path, "--fetch", "wiki")[::2], "data", "unknown corpus")
    one_line_error(*cli("data", "--data-dir", tmp_path, "--source", tmp_path)[::2], "data", "--fetch")
    (tmp_path / "notes.txt").write_text("keep\n")
    one_line_error(*cli("data", "--data-dir", tmp_path / "notes.txt", "--fetch", "ptb")[::2], "data",
                   f"cannot write {tmp_path / 'notes.txt' / 'ptb'}: {tmp_path / 'notes.txt'} is not a folder")


def test_the_table_says_when_the_data_folder_is_not_there(cli, tmp_path):
    # every split read "missing", with no word that the folder itself was the trouble
    status, out, err = cli("data", "--data-dir", tmp_path / "typo")
    assert status == 0 and f"corpora in {(tmp_path / 'typo').resolve()} (it does not exist)," in out, err
    (tmp_path / "file").write_text("x", encoding="utf-8")
    status, out, err = cli("data", "--data-dir", tmp_path / "file")
    assert status == 0 and "(not a folder)" in out, err


def _textebm(*args, **popen):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "textebm", *map(str, args)], stderr=subprocess.PIPE, text=True,
                            **popen)


def test_a_reader_that_leaves_early_ends_the_command_quietly(data_folder):
    import subprocess

    proc = _textebm("data", "--data-dir", data_folder(ptb="train valid test"), "--json", stdout=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first write (`textebm data | head -0`)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141 and err == "", err  # as SIGPIPE would end it: no traceback


def test_a_full_disk_under_stdout_is_one_line():
    import os

    if not os.path.exists("/dev/full"):
        import pytest

        pytest.skip("/dev/full is Linux's")
    with open("/dev/full", "w") as full:
        proc = _textebm("data", "--data-dir", "/nonexistent-folder", "--json", stdout=full)
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 1, err
    assert err.splitlines() == ["textebm data: error: no space left on the device"], err


def test_a_damaged_gz_split_is_not_the_standard_one_and_no_traceback(cli, tmp_path):
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "train.txt.gz").write_bytes(b"not gzip\n")  # its checksum could not be read: a traceback
    status, out, err = cli("data", "--data-dir", tmp_path, "--json")
    assert status == 0 and json.loads(out)["ptb"]["splits"]["train"]["sha256_ok"] is False, err
