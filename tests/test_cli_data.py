"""`textebm data`: the corpus table with checksums, and `--fetch` from a local mirror (never the network)."""

from __future__ import annotations

import json
import shutil


def _mirror(tmp_path, data_dir, damage: str | None = None):
    """A folder laid out like the PTB mirror (ptb.train.txt, ...), from the shared corpus."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copy(data_dir / "ptb" / f"{split}.txt", mirror / f"ptb.{split}.txt")
    if damage:
        with open(mirror / f"ptb.{damage}.txt", "a", encoding="utf-8") as handle:
            handle.write(" one more line \n")
    return mirror


def test_table_reports_present_splits_and_checksums(cli, data_dir, tmp_path):
    status, out, err = cli("data", "--data-dir", data_dir, "--json")
    assert status == 0, err
    report = json.loads(out)
    assert set(report) == {"ptb", "snli", "yahoo"}
    assert all(report["ptb"]["splits"][s]["sha256_ok"] is True for s in ("train", "valid", "test"))
    assert report["yahoo"]["splits"]["train"]["path"] is None and "valid" in report["yahoo"]["substitute"]
    # a file that is present but not the standard one
    folder = tmp_path / "d" / "ptb"
    folder.mkdir(parents=True)
    (folder / "valid.txt").write_text("a b c\n", encoding="utf-8")
    status, out, err = cli("data", "--data-dir", tmp_path / "d")
    assert status == 0, err
    ptb_row = next(line for line in out.splitlines() if line.startswith("ptb"))
    assert "missing" in ptb_row and "sha256 DIFFERS" in ptb_row


def test_fetch_ptb_from_a_local_mirror(cli, data_dir, tmp_path):
    target = tmp_path / "data"
    status, out, err = cli("data", "--data-dir", target, "--fetch", "ptb", "--source", _mirror(tmp_path, data_dir))
    assert status == 0, err
    assert sorted(p.name for p in (target / "ptb").iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    assert (target / "ptb" / "train.txt").read_bytes() == (data_dir / "ptb" / "train.txt").read_bytes()
    assert "ok (4.9 MiB, sha256 match)" in out


def test_failed_fetch_is_one_line_and_leaves_no_partial_file(cli, data_dir, tmp_path, one_line_error):
    target = tmp_path / "data"
    mirror = _mirror(tmp_path, data_dir, damage="valid")
    one_line_error(*cli("data", "--data-dir", target, "--fetch", "ptb", "--source", mirror)[::2], "data",
                   "sha256")
    assert list((target / "ptb").iterdir()) == []  # neither the good train file nor a partial one
    one_line_error(*cli("data", "--data-dir", target, "--fetch", "ptb", "--source",
                        (tmp_path / "nowhere").as_uri())[::2], "data", "download failed")
    assert list((target / "ptb").iterdir()) == []


def test_bad_requests(cli, tmp_path, one_line_error):
    one_line_error(*cli("data", "--data-dir", tmp_path, "--fetch", "wiki")[::2], "data", "unknown corpus")
    one_line_error(*cli("data", "--data-dir", tmp_path, "--fetch", "yahoo")[::2], "data", "cannot be downloaded")
    one_line_error(*cli("data", "--data-dir", tmp_path, "--source", tmp_path)[::2], "data", "--fetch")
