"""Corpora: local splits through `datasets`, user files, bad files, the PTB download (against a
local HTTP server) and the SNLI recipe (on local Parquet files). No test touches the network."""

import gzip
import hashlib
import http.server
import json
import re
import threading
from functools import partial
from pathlib import Path

import pytest
from synthetic_corpus import write_corpus

from textebm.data import corpora
from textebm.data.corpora import (
    KNOWN,
    arae_snli_sentences,
    check_evaluation_split,
    evaluation_splits,
    fetch,
    fetch_ptb,
    fetch_snli,
    open_corpus,
    open_run_corpus,
    read_lines,
    record_of,
    training_splits,
)
from textebm.errors import UserError

# --- local corpora: the synthetic corpus laid out as each case needs ---------------------------

def test_a_complete_corpus_is_read_from_the_data_folder(data_folder, synthetic_splits):
    corpus = open_corpus("ptb", str(data_folder(ptb="train valid test")))
    assert set(corpus.files) == {"train", "valid", "test"}
    assert corpus.lines("valid") == synthetic_splits["valid"]


def test_data_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTEBM_DATA_DIR", str(tmp_path))
    assert corpora.data_dir() == tmp_path
    assert corpora.data_dir("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("TEXTEBM_DATA_DIR")
    assert corpora.data_dir() == Path("data")


def test_training_splits_use_valid(data_folder, synthetic_splits):
    corpus = open_corpus("ptb", str(data_folder(ptb="train valid test")))
    train, valid, source = training_splits(corpus)
    assert (train, valid, source) == (synthetic_splits["train"], synthetic_splits["valid"], "valid")


def test_missing_train_split_suggests_train_split(data_folder, synthetic_splits):
    corpus = open_corpus("yahoo", str(data_folder(yahoo="valid test")))
    assert not corpus.has("train")
    with pytest.raises(UserError, match="no train split.*--train-split valid"):
        training_splits(corpus)
    train, valid, source = training_splits(corpus, "valid")
    assert (train, valid, source) == (synthetic_splits["valid"], synthetic_splits["test"], "test")


def test_evaluation_splits_of_the_substitute_training_splits(data_folder):
    """Without train, Yahoo trains on valid and is evaluated on test; SNLI (test only) on the lines held
    out of test; a complete corpus on its test split."""
    folder = str(data_folder(yahoo="valid test", snli="test", ptb="train valid test"))
    yahoo = open_corpus("yahoo", folder)
    train, held_out, source = evaluation_splits(yahoo, "valid", "test")
    assert train == yahoo.lines("valid") and held_out == yahoo.lines("test") and source == "test"
    with pytest.raises(UserError, match="trained on the valid split.*--split test"):
        evaluation_splits(yahoo, "valid", "valid")
    snli = open_corpus("snli", folder)
    train, held_out, source = evaluation_splits(snli, "test", "test")
    assert train + held_out == snli.lines("test") and "held out" in source
    assert len(held_out) == len(snli.lines("test")) // 20
    ptb = open_corpus("ptb", folder)
    assert evaluation_splits(ptb, "train", "test")[1] == ptb.lines("test")


def test_a_single_files_held_out_lines_are_its_valid_split(tmp_path, data_folder):
    """`train --corpus FILE` validates on its last 5%: `--split valid` evaluates them (no split of the file
    could reach them); test names none, and says so. SNLI (test only) stays as it was."""
    path = tmp_path / "text.txt"
    path.write_text("".join(f"sentence {i}\n" for i in range(100)), encoding="utf-8")
    corpus = open_corpus(str(path))
    train, held_out, source = evaluation_splits(corpus, "train", "valid")
    assert len(train) == 95 and held_out == [f"sentence {i}" for i in range(95, 100)]
    assert source == "last 5 lines of train (held out)"
    assert check_evaluation_split(corpus, "train", "valid") is True
    with pytest.raises(UserError, match=r"no test split \(have: train\).*the last 5% of train, is --split valid"):
        evaluation_splits(corpus, "train", "test")
    snli = open_corpus("snli", str(data_folder(snli="test")))
    with pytest.raises(UserError, match=r"no valid split \(have: test\); evaluate needs held-out text$"):
        evaluation_splits(snli, "test", "valid")


# --- the real corpora ($TEXTEBM_DATA_DIR) --------------------------------------------------------

# --- a run's record of its corpus (corpus.json) ---------------------------------------------------

def _run_with_record(tmp_path, corpus) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / corpora.RECORD).write_text(json.dumps(record_of(corpus)), encoding="utf-8")
    return run


def test_a_run_finds_the_files_it_recorded_without_a_data_dir(tmp_path, data_folder, monkeypatch):
    corpus = open_corpus("ptb", str(data_folder(ptb="train valid test")))
    run = _run_with_record(tmp_path, corpus)
    monkeypatch.setenv("TEXTEBM_DATA_DIR", str(tmp_path / "elsewhere"))  # holds no corpus (and downloads are off)
    found, warnings = open_run_corpus(run, "ptb")
    assert found.files == {split: path.resolve() for split, path in corpus.files.items()} and warnings == []
    with pytest.raises(UserError, match="data folder .*elsewhere does not exist"):  # as before the record
        open_corpus("ptb")


def test_a_data_dir_that_does_not_exist_is_refused_for_a_run_on_its_own_files(tmp_path):
    # it was ignored (a typo passed unseen) whenever the run's corpus was a path
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train.txt").write_text("a b c\n", encoding="utf-8")
    run = _run_with_record(tmp_path, open_corpus(str(folder)))
    assert open_run_corpus(run, str(folder))[0].files["train"] == (folder / "train.txt").resolve()
    with pytest.raises(UserError, match=f"^the data folder {tmp_path / 'typo'} does not exist \\(check --data-dir"):
        open_run_corpus(run, str(folder), str(tmp_path / "typo"))


def test_a_data_dir_wins_over_the_record_and_a_changed_file_is_named(tmp_path, data_folder, synthetic_splits):
    run = _run_with_record(tmp_path, open_corpus("ptb", str(data_folder(ptb="train valid test"))))
    copy = tmp_path / "copy"
    write_corpus(copy / "ptb", {"train": synthetic_splits["train"], "valid": synthetic_splits["valid"],
                                "test": synthetic_splits["test"][:-1]})
    found, warnings = open_run_corpus(run, "ptb", str(copy))
    assert found.files["train"] == copy / "ptb" / "train.txt"
    assert len(warnings) == 1 and "ptb's test split" in warnings[0] and "sha256 differs" in warnings[0]


def test_a_moved_corpus_is_found_through_the_data_dir_or_named(tmp_path, data_folder, monkeypatch):
    root = data_folder(ptb="train valid test")
    run = _run_with_record(tmp_path, open_corpus("ptb", str(root)))
    moved = tmp_path / "moved"
    root.rename(moved)
    monkeypatch.setenv("TEXTEBM_DATA_DIR", str(moved))
    found, warnings = open_run_corpus(run, "ptb")
    assert found.files["test"] == moved / "ptb" / "test.txt" and warnings == []
    monkeypatch.delenv("TEXTEBM_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=rf"no longer in {re.escape(str(root / 'ptb'))} \(its corpus.json\), .*PTB not "
                                        "found in data/ptb"):
        open_run_corpus(run, "ptb")


def test_a_split_added_to_the_recorded_folder_later_is_found(tmp_path, data_folder, synthetic_splits, monkeypatch):
    """Yahoo trained on valid with no test file yet: a test.txt added to its folder afterwards is the
    corpus's test split, not 'no test split'."""
    root = data_folder(yahoo="valid")
    run = _run_with_record(tmp_path, open_corpus("yahoo", str(root)))
    write_corpus(root / "yahoo", {"test": synthetic_splits["test"]})
    monkeypatch.setenv("TEXTEBM_DATA_DIR", str(tmp_path / "elsewhere"))
    found, warnings = open_run_corpus(run, "yahoo")
    assert found.files == {"valid": (root / "yahoo" / "valid.txt").resolve(), "test": root / "yahoo" / "test.txt"}
    assert warnings == []


def test_a_single_files_record_holds_with_a_data_dir_and_gzip_counts_its_text(tmp_path, monkeypatch):
    text = tmp_path / "text.txt.gz"
    text.write_bytes(gzip.compress(b"a b c\nd e f\n", mtime=1))
    (tmp_path / "test.txt").write_text("not part of a single-file corpus\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # the run trains on "text.txt.gz", named from here ...
    run = _run_with_record(tmp_path, open_corpus("text.txt.gz"))
    monkeypatch.chdir(tmp_path / "run")  # ... and is evaluated from elsewhere
    (tmp_path / "some-data").mkdir()
    found, warnings = open_run_corpus(run, "text.txt.gz", str(tmp_path / "some-data"))
    assert found.files == {"train": text} and warnings == []  # --data-dir is for known corpora only
    before = text.read_bytes()
    text.write_bytes(gzip.compress(b"a b c\nd e f\n", mtime=12345))  # the same text, another gzip header
    assert text.read_bytes() != before and open_run_corpus(run, "text.txt.gz")[1] == []
    text.write_bytes(gzip.compress(b"a b c\n", mtime=1))
    assert "is not the text the run was trained with" in open_run_corpus(run, "text.txt.gz")[1][0]


def test_a_run_without_a_record_and_a_broken_record(tmp_path, data_folder):
    root = str(data_folder(ptb="train valid test"))
    run = tmp_path / "old-run"
    run.mkdir()
    found, warnings = open_run_corpus(run, "ptb", root)
    assert set(found.files) == {"train", "valid", "test"} and warnings == []
    (run / corpora.RECORD).write_text('{"files": {"train": {"path": 3}}}', encoding="utf-8")
    with pytest.raises(UserError, match="corpus.json is unreadable.*delete it"):
        open_run_corpus(run, "ptb", root)
    (run / corpora.RECORD).write_text(json.dumps(record_of(open_corpus("ptb", root))), encoding="utf-8")
    assert open_run_corpus(run, "ptb")[0].name == "ptb"
    with pytest.raises(UserError, match="records the corpus 'ptb', not the run's own \\('snli'\\): delete it"):
        open_run_corpus(run, "snli")
    snli = data_folder(snli="test")  # --data-dir names where the run's own known corpus is: the record is moot
    assert open_run_corpus(run, "snli", str(snli)) == (open_corpus("snli", str(snli)), [])


def test_real_ptb_has_mikolovs_splits(real_data_dir):
    corpus = open_corpus("ptb", str(real_data_dir))
    train, valid, source = training_splits(corpus)
    assert len(train) == 42068 and len(valid) == 3370 and source == "valid"  # blank lines dropped
    assert len(corpus.lines("test")) == 3761
    assert "<unk>" in " ".join(valid[:50])


@pytest.mark.parametrize("name", ["yahoo", "snli"])
def test_real_corpus_trains_on_what_is_present(real_data_dir, name):
    """Whatever splits of Yahoo or SNLI the folder holds, training finds its lines: train when present,
    else (as `textebm data` suggests) the first split present, validating on another or a held-out tail."""
    if not (real_data_dir / name).is_dir():
        pytest.skip(f"TEXTEBM_DATA_DIR has no {name}/ folder")
    corpus = open_corpus(name, str(real_data_dir))
    train_split = "train" if corpus.has("train") else next(iter(corpus.files))
    train, valid, source = training_splits(corpus, train_split)
    assert len(train) > 1000 and len(valid) > 100
    if source in corpus.files:
        assert source != train_split and valid == corpus.lines(source)
    else:
        assert "held out" in source and train + valid == corpus.lines(train_split)


def test_gzip_split_and_blank_lines(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    with gzip.open(folder / "train.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("one line\n\n   \ntwo line\n")
    corpus = open_corpus(str(folder))
    assert corpus.lines("train") == ["one line", "two line"]


def test_user_file_holds_out_validation(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("".join(f"sentence {i}\n" for i in range(100)), encoding="utf-8")
    corpus = open_corpus(str(path))
    train, valid, source = training_splits(corpus)
    assert len(train) == 95 and valid == [f"sentence {i}" for i in range(95, 100)]
    assert "held out" in source


def test_user_folder_needs_a_split_and_trains_on_the_one_asked_for(tmp_path):
    with pytest.raises(UserError, match="holds none of train.txt, valid.txt, test.txt"):
        open_corpus(str(tmp_path))
    (tmp_path / "valid.txt").write_text("".join(f"v {i}\n" for i in range(20)), encoding="utf-8")
    (tmp_path / "test.txt").write_text("t 0\nt 1\n", encoding="utf-8")
    corpus = open_corpus(str(tmp_path))  # Yahoo's way (--train-split valid) is open to a user's folder too
    with pytest.raises(UserError, match="has no train split here .*--train-split valid"):
        training_splits(corpus)
    train, valid, source = training_splits(corpus, "valid")
    assert len(train) == 20 and valid == ["t 0", "t 1"] and source == "test"


def test_a_corpus_name_found_in_the_data_folder_is_pointed_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEXTEBM_DATA_DIR", raising=False)  # the default data/ of the working folder
    write_corpus(tmp_path / "data" / "mine", {"train": ["a b", "c d"]})
    with pytest.raises(UserError, match=f"the data folder holds {Path('data') / 'mine'}: give --corpus "):
        open_corpus("mine")
    with pytest.raises(UserError, match="nor an existing file or folder$"):
        open_corpus("yours")
    assert open_corpus(str(Path("data") / "mine")).lines("train") == ["a b", "c d"]


def test_a_file_replaced_with_the_same_mtime_is_read_anew(tmp_path):
    # datasets' text builder cached a local file by path and mtime: `cp -p` of new text read the old text
    import os

    path = tmp_path / "train.txt"
    path.write_text("old one\nold two\n", encoding="utf-8")
    stamp = path.stat()
    assert read_lines(path) == ["old one", "old two"]
    path.write_text("new\n", encoding="utf-8")
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert read_lines(path) == ["new"]


def test_lines_end_at_newlines_only_and_a_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"\xef\xbb\xbfthe cat\r\na\rb c\n\n")
    assert read_lines(path) == ["the cat", "a\rb c"]  # a lone \r is whitespace inside its line, as lm_eval reads it
    from textebm.data.vocab import tokenize

    assert [tokenize(line, "word") for line in read_lines(path)] == [["the", "cat"], ["a", "b", "c"]]


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="neither a known corpus"):
        open_corpus(str(tmp_path / "nope.txt"))


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="holds no sentences"):
        read_lines(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\ncaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8.*line 2"):
        read_lines(path)


def test_single_sentence_is_too_little(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("only one\n", encoding="utf-8")
    with pytest.raises(UserError, match="single sentence"):
        training_splits(open_corpus(str(path)))


# --- missing corpora, offline ----------------------------------------------------------------

def test_offline_missing_ptb_names_the_folder(tmp_path):
    with pytest.raises(UserError, match="downloads are off") as info:
        open_corpus("ptb", str(tmp_path))
    assert str(tmp_path / "ptb") in str(info.value)
    assert not (tmp_path / "ptb").exists() or not any((tmp_path / "ptb").iterdir())


def test_a_data_folder_that_does_not_exist_is_an_error_not_a_new_folder(tmp_path, monkeypatch):
    # a mistyped --data-dir /nonexist made /nonexist/ptb, and with the network up downloaded PTB into it
    monkeypatch.setattr("textebm.data.corpora.fetch", lambda *a, **k: pytest.fail("fetched into a typo"))
    typo = tmp_path / "typo" / "data"
    for corpus in KNOWN:
        with pytest.raises(UserError, match=f"^the data folder {typo} does not exist .*--fetch {corpus} --data-dir"):
            open_corpus(corpus, str(typo))
    monkeypatch.setenv("TEXTEBM_DATA_DIR", str(typo))
    with pytest.raises(UserError, match=f"^the data folder {typo} does not exist"):
        open_corpus("ptb")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_fetch_leaves_no_folder_and_names_a_data_folder_that_does_not_exist(tmp_path):
    # `textebm data --fetch` makes the folder it fetches into: a failure removes it and says it was new
    typo = tmp_path / "typo" / "data"
    with pytest.raises(UserError, match=f"the data folder {typo} does not exist .*downloads are off"):
        fetch("ptb", str(typo))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="^SNLI not found"):  # an existing data folder: no word about it
        open_corpus("snli", str(tmp_path / "data"))
    assert list(tmp_path.iterdir()) == [tmp_path / "data"] and not any((tmp_path / "data").iterdir())


def test_offline_missing_snli_names_the_folder(tmp_path):
    with pytest.raises(UserError, match="downloads are off") as info:
        open_corpus("snli", str(tmp_path))
    assert str(tmp_path / "snli") in str(info.value)


def test_yahoo_cannot_be_downloaded(tmp_path):
    with pytest.raises(UserError, match="cannot be downloaded") as info:
        open_corpus("yahoo", str(tmp_path))
    assert str(tmp_path / "yahoo") in str(info.value)


# --- PTB download against a local HTTP server -----------------------------------------------

FIXTURE_PTB = {
    "train": " the cat sat on the mat \n the <unk> ran \n",
    "valid": " a dog sat \n",
    "test": " N cats ran \n",
}


@pytest.fixture
def ptb_server(tmp_path, monkeypatch):
    """Serve tiny ptb.{split}.txt files on 127.0.0.1; yields {split: url}."""
    root = tmp_path / "www"
    root.mkdir()
    for split, text in FIXTURE_PTB.items():
        (root / f"ptb.{split}.txt").write_text(text, encoding="utf-8")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("TEXTEBM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    port = server.server_address[1]
    yield {split: f"http://127.0.0.1:{port}/ptb.{split}.txt" for split in FIXTURE_PTB}
    server.shutdown()
    server.server_close()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_ptb_download_good(tmp_path, ptb_server, monkeypatch):
    monkeypatch.setattr(corpora, "PTB_SHA256", {s: _sha(t) for s, t in FIXTURE_PTB.items()})
    folder = tmp_path / "data" / "ptb"
    fetch_ptb(folder, urls=ptb_server)
    for split, text in FIXTURE_PTB.items():
        assert (folder / f"{split}.txt").read_text(encoding="utf-8") == text
    assert sorted(p.name for p in folder.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    corpus = open_corpus("ptb", str(tmp_path / "data"))  # found locally now: no second download
    assert corpus.lines("valid") == [" a dog sat "]


def test_ptb_download_through_open_corpus(tmp_path, ptb_server, monkeypatch):
    monkeypatch.setattr(corpora, "PTB_SHA256", {s: _sha(t) for s, t in FIXTURE_PTB.items()})
    monkeypatch.setattr(corpora, "PTB_URLS", ptb_server)
    corpus = open_corpus("ptb", str(tmp_path))
    assert corpus.lines("test") == [" N cats ran "]


def test_ptb_download_sha256_mismatch_on_first_file(tmp_path, ptb_server, monkeypatch):
    table = {s: _sha(t) for s, t in FIXTURE_PTB.items()}
    table["train"] = "0" * 64
    monkeypatch.setattr(corpora, "PTB_SHA256", table)
    folder = tmp_path / "ptb"
    with pytest.raises(UserError, match="sha256"):
        fetch_ptb(folder, urls=ptb_server)
    assert not folder.exists() or list(folder.iterdir()) == []


def test_ptb_download_sha256_mismatch_leaves_no_partial_corpus(tmp_path, ptb_server, monkeypatch):
    """A mismatch on the last file must not leave train/valid behind: open_corpus would then take
    the half-downloaded folder for a complete corpus and never download again."""
    table = {s: _sha(t) for s, t in FIXTURE_PTB.items()}
    table["test"] = "0" * 64
    monkeypatch.setattr(corpora, "PTB_SHA256", table)
    folder = tmp_path / "ptb"
    with pytest.raises(UserError, match="sha256"):
        fetch_ptb(folder, urls=ptb_server)
    assert not folder.exists() or list(folder.iterdir()) == []


def test_ptb_download_http_error_is_a_user_error(tmp_path, ptb_server, monkeypatch):
    monkeypatch.setattr(corpora, "PTB_SHA256", {s: _sha(t) for s, t in FIXTURE_PTB.items()})
    urls = {**ptb_server, "train": ptb_server["train"].replace("ptb.train", "missing")}
    folder = tmp_path / "ptb"
    with pytest.raises(UserError, match="download failed"):
        fetch_ptb(folder, urls=urls)
    assert not folder.exists() or list(folder.iterdir()) == []


def test_ptb_fetch_of_the_standard_files_downloads_nothing_and_clears_a_killed_fetch(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "PTB_SHA256", {s: _sha(t) for s, t in FIXTURE_PTB.items()})
    folder = tmp_path / "ptb"
    folder.mkdir()
    for split, text in FIXTURE_PTB.items():
        (folder / f"{split}.txt").write_text(text, encoding="utf-8")
    (folder / ".train.txt.download").write_text("half", encoding="utf-8")  # SIGTERM mid-download left it
    monkeypatch.setenv("TEXTEBM_OFFLINE", "1")  # offline, it said "PTB not found" of a complete PTB
    fetch_ptb(folder, urls={s: "http://127.0.0.1:9/nothing" for s in FIXTURE_PTB})
    assert sorted(p.name for p in folder.iterdir()) == ["test.txt", "train.txt", "valid.txt"]


def test_ptb_download_refused_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTEBM_OFFLINE", "1")
    with pytest.raises(UserError, match="TEXTEBM_OFFLINE"):
        fetch_ptb(tmp_path / "ptb", urls={s: "http://127.0.0.1:9/x" for s in FIXTURE_PTB})


# --- SNLI: the ARAE recipe ----------------------------------------------------------------------

def test_arae_snli_sentences():
    long = " ".join(["word"] * 16)
    ok15 = " ".join(["word"] * 14) + "."
    premises = ["A man runs.", "A man runs.", "A man runs.", "Two DOGS bark.", "A man runs.", long, ok15]
    hypotheses = ["A person moves.", "Nobody runs.", "", long]
    out = arae_snli_sentences(premises, hypotheses)
    assert out == [
        "a man runs .", "two dogs bark .", "a man runs .", " ".join(["word"] * 14) + " .",  # premises first
        "a person moves .", "nobody runs .",  # then hypotheses; empty and > 15 tokens dropped
    ]
    assert all(len(s.split()) <= 15 for s in out)


def test_fetch_snli_from_local_parquet(tmp_path):
    import datasets

    source = tmp_path / "hub"
    source.mkdir()
    rows = {
        "train": (["A man runs.", "A man runs.", "A woman sings."], ["He moves.", "He sleeps.", "She is quiet."]),
        "validation": (["Kids play outside."], ["Children are playing."]),
        "test": (["The Cat sleeps.", "The Cat sleeps."], ["A cat rests.", "A dog barks."]),
    }
    for split, (premises, hypotheses) in rows.items():
        datasets.Dataset.from_dict({"premise": premises, "hypothesis": hypotheses,
                                    "label": [0] * len(premises)}).to_parquet(str(source / f"{split}.parquet"))
    folder = tmp_path / "data" / "snli"
    fetch_snli(folder, source=str(source))
    def read(split):
        return (folder / f"{split}.txt").read_text(encoding="utf-8").splitlines()

    assert read("train") == ["a man runs .", "a woman sings .", "he moves .", "he sleeps .", "she is quiet ."]
    assert read("valid") == ["kids play outside .", "children are playing ."]
    assert read("test") == ["the cat sleeps .", "a cat rests .", "a dog barks ."]
    corpus = open_corpus("snli", str(tmp_path / "data"))
    assert set(corpus.files) == {"train", "valid", "test"}


def test_fetch_snli_reads_every_shard_and_the_hubs_own_layout(tmp_path):
    import datasets

    source = tmp_path / "snapshot" / "plain_text"  # a hub snapshot: the files sit in a subfolder
    source.mkdir(parents=True)
    for shard, premise in enumerate(["A man runs.", "A woman sings."]):
        datasets.Dataset.from_dict({"premise": [premise], "hypothesis": [f"Shard {shard}."], "label": [0]}).to_parquet(
            str(source / f"train-0000{shard}-of-00002.parquet"))
    folder = tmp_path / "data" / "snli"
    fetch_snli(folder, source=str(tmp_path / "snapshot"))
    lines = (folder / "train.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["a man runs .", "a woman sings .", "shard 0 .", "shard 1 ."]  # the second shard was lost
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"holds no train\*.parquet, validation\*.parquet or test\*.parquet file"):
        fetch_snli(tmp_path / "data2" / "snli", source=str(empty))


def test_fetch_snli_bad_source_is_a_user_error(tmp_path):
    source = tmp_path / "hub"
    source.mkdir()
    (source / "train.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="could not be loaded"):
        fetch_snli(tmp_path / "snli", source=str(source))
