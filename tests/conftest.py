"""Shared fixtures for the core-library tests.

The tests read the synthetic corpus of tests/synthetic_corpus.py, so the suite runs on a fresh clone
without any downloaded corpus; `data_folder` lays it out as a corpora folder (PTB complete, Yahoo
without train, ...) for the tests of each case. Only the tests of the real PTB, Yahoo and SNLI files
take `real_data_dir`: $TEXTEBM_DATA_DIR (CI sets it, so they run on every submission); unset, they
are skipped with that reason. Every test runs with TEXTEBM_OFFLINE=1, so nothing can start a download.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from textebm.inference.closed_form import QuadraticTilt

# A model small enough that a training step takes milliseconds on one CPU core.
TINY_OVERRIDES = [
    "embedding_dim=16", "hidden_dim=32", "latent_dim=4", "energy_hidden=16",
    "prior_steps=5", "posterior_steps=3", "posterior_init=noise", "chain_precision=fp32", "batch_size=16",
    "dropout=0.0", "max_length=30", "num_log_samples=1", "valid_batches=2", "log_every=1",
    "checkpoint_every=10", "valid_every=0",
]
SMALL_CORPUS_LINES = 400  # first lines of the synthetic train split, written to a temporary text file
FETCH_HINT = "textebm data --fetch ptb --data-dir DIR"


def _set_args(overrides: list[str]) -> list[str]:
    out = []
    for item in overrides:
        out += ["--set", item]
    return out


def pytest_collection_modifyitems(config, items):
    """A test marked `cuda` is skipped where torch sees no CUDA GPU: the mark is the one way to say it, so
    the GPU acceptance run (bench/gpu_acceptance.sh, `pytest -m cuda`) selects every such test."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and the CI machine has only two cores)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _tf32_as_found():
    """Each test leaves the process's TF32 switches as it found them: a command run with --device cuda turns
    TF32 on for the rest of the process, and a CPU-vs-GPU comparison after it would depend on test order."""
    precision, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = cudnn


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the network: a missing corpus must fail, not download."""
    monkeypatch.setenv("TEXTEBM_OFFLINE", "1")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real corpora, from $TEXTEBM_DATA_DIR: PTB must be there, Yahoo and SNLI may be (any splits).

    Unset, the tests of the real files are skipped, saying why; every other test reads the synthetic
    corpus. CI sets it. Set but without PTB, the tests fail: the folder was named to be tested."""
    value = os.environ.get("TEXTEBM_DATA_DIR")
    if not value:
        pytest.skip("needs the real corpora: TEXTEBM_DATA_DIR is not set (CI sets it; fill a folder with "
                    f"`{FETCH_HINT}`)")
    folder = Path(value)
    if not (folder / "ptb" / "train.txt").is_file():
        pytest.fail(f"TEXTEBM_DATA_DIR={value} has no ptb/train.txt: `{FETCH_HINT}` fetches it", pytrace=False)
    return folder


@pytest.fixture(scope="session")
def synthetic_splits() -> dict[str, list[str]]:
    """The synthetic corpus's splits (PTB-shaped lines: ` word word `)."""
    from synthetic_corpus import synthetic_splits

    return synthetic_splits()


@pytest.fixture(scope="session")
def train_lines(synthetic_splits) -> list[str]:
    return synthetic_splits["train"]


@pytest.fixture(scope="session")
def valid_lines(synthetic_splits) -> list[str]:
    return synthetic_splits["valid"]


@pytest.fixture(scope="session")
def test_lines(synthetic_splits) -> list[str]:
    return synthetic_splits["test"]


@pytest.fixture(scope="session")
def short_lines(valid_lines) -> list[str]:
    """Validation lines that fit the tiny runs' max_length (30 tokens): none is truncated."""
    return [line for line in valid_lines if len(line.split()) <= 30]


@pytest.fixture
def data_folder(tmp_path, synthetic_splits):
    """`make(ptb="train valid test", yahoo="valid test", ...)`: a corpora folder (as $TEXTEBM_DATA_DIR
    or --data-dir) holding, for each corpus named, the synthetic corpus's splits named."""
    from synthetic_corpus import write_corpus

    def make(**layout: str) -> Path:
        root = tmp_path / "data"
        for corpus, splits in layout.items():
            write_corpus(root / corpus, {split: synthetic_splits[split] for split in splits.split()})
        return root

    return make


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, train_lines) -> Path:
    """A user text file (one sentence per line): the first 400 lines of the synthetic train split."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text("\n".join(train_lines[:SMALL_CORPUS_LINES]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus_folder(tmp_path, train_lines, valid_lines):
    """A corpus folder of 300 synthetic training lines (train.txt) and 40 held-out lines (test.txt)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.txt").write_text("\n".join(train_lines[:300]) + "\n", encoding="utf-8")
    (folder / "test.txt").write_text("\n".join(valid_lines[:40]) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY_OVERRIDES)


@pytest.fixture
def tiny_config():
    from textebm.config import resolve_config

    return resolve_config("cpu", "ptb", TINY_OVERRIDES)


@pytest.fixture
def latent_model(tiny_config, train_lines):
    """`make(z_scale, sentences)`: a small untrained model (latent 8) and a padded batch of synthetic
    sentences. The decoder's z weights are multiplied by `z_scale`: 5 makes the output a strong
    function of z (p(z | x) much narrower than the prior; the output layer is scaled up too),
    0 cuts every path from z to the output (a decoder that ignores z)."""
    from textebm.data.batches import encode_lines, pad
    from textebm.data.vocab import WordVocab
    from textebm.model.runs import build_model

    def make(z_scale: float, sentences: int = 32):
        config = tiny_config
        config.latent_dim = 8
        vocab = WordVocab.build(train_lines[:500])
        torch.manual_seed(0)
        model = build_model(config, vocab).eval()
        emb = config.embedding_dim
        with torch.no_grad():
            model.decoder.z_to_state.weight.mul_(z_scale)
            model.decoder.rnn.weight_ih_l0[:, emb:].mul_(z_scale)
            if z_scale > 1:
                model.decoder.out.weight.mul_(z_scale)
        tokens = pad(encode_lines(train_lines[:sentences], vocab, 30).sentences, vocab.pad_id)
        return model, tokens

    return make


@pytest.fixture
def saved_run(tmp_path, tiny_config, train_lines):
    """A run folder saved at step 7 by `save_checkpoint`, after one real Adam step of the generator:
    (folder, model, optimizers, vocab)."""
    from textebm.data.vocab import WordVocab
    from textebm.model.checkpoints import save_checkpoint
    from textebm.model.runs import build_model, create_run
    from textebm.training.learner import make_optimizers

    vocab = WordVocab.build(train_lines[:200])
    torch.manual_seed(0)
    model = build_model(tiny_config, vocab)
    optimizers = make_optimizers(model, tiny_config)
    # one real optimizer step, so that the optimizer state is not empty
    tokens = torch.tensor([[1, 5, 2], [1, 6, 2]])
    loss = -model.decoder.log_likelihood(torch.randn(2, tiny_config.latent_dim), tokens).mean()
    loss.backward()
    optimizers["generator"].step()
    folder = tmp_path / "run"
    create_run(folder, tiny_config, vocab)
    save_checkpoint(folder, model, optimizers, 7)
    return folder, model, optimizers, vocab


@pytest.fixture(scope="session")
def train_args(small_corpus):
    """`textebm train` arguments for a tiny run on the small corpus (add --out and --max-steps)."""

    def make(*extra: str, overrides: list[str] = ()) -> list[str]:
        return ["train", "--corpus", str(small_corpus), "--preset", "cpu",
                *_set_args(TINY_OVERRIDES), *_set_args(list(overrides)),
                "--device", "cpu", "--threads", "1", "--no-progress", *extra]

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, train_args) -> Path:
    """A tiny run folder trained for 20 steps through `textebm train`, built once per session.

    Tests must not modify it; use `run_copy` for a writable copy."""
    from textebm.cli import main

    folder = tmp_path_factory.mktemp("runs") / "tiny"
    previous = os.environ.get("TEXTEBM_OFFLINE")
    os.environ["TEXTEBM_OFFLINE"] = "1"
    try:
        status = main(train_args("--out", str(folder), "--max-steps", "20", "--seed", "0"))
    finally:
        if previous is None:
            os.environ.pop("TEXTEBM_OFFLINE", None)
        else:
            os.environ["TEXTEBM_OFFLINE"] = previous
    assert status == 0, "the session's tiny training run failed"
    for name in ("config.json", "vocab.json", "model.safetensors", "training_state.pt", "metrics.jsonl"):
        assert (folder / name).is_file(), f"tiny run has no {name}"
    return folder


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A writable copy of the session's tiny run."""
    target = tmp_path / "run"
    shutil.copytree(trained_run, target)
    return target


@pytest.fixture
def cli(capsys):
    """Run `textebm ARGS` in-process: returns (status, stdout, stderr)."""
    from textebm.cli import main

    def invoke(*args: str):
        capsys.readouterr()
        try:
            status = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            status = exc.code
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


def assert_one_line_error(status, err: str, command: str, *fragments: str) -> None:
    """Exit status 2, exactly one line on stderr, `textebm CMD: error: ...`, no traceback."""
    assert status == 2, f"expected exit status 2, got {status}; stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
    assert lines[0].startswith(f"textebm {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), f"{fragment!r} not in {lines[0]!r}"


@pytest.fixture(scope="session")
def one_line_error():
    return assert_one_line_error


@pytest.fixture(scope="session")
def textebm_exe() -> str:
    """The installed console script (the venv's `textebm`)."""
    candidate = Path(sys.executable).parent / "textebm"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("textebm")
    if not found:
        pytest.fail("the `textebm` console script is not installed (pip install -e .)", pytrace=False)
    return found


@pytest.fixture(scope="session")
def subprocess_env(lm_cache) -> dict[str, str]:
    """A command's environment: offline, one thread, the session's KenLM cache (built before the autouse
    fixtures run, so it sets what they set)."""
    from lm_eval.ngram import ENV_LM_CACHE

    env = dict(os.environ)
    env.update(TEXTEBM_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1", **{ENV_LM_CACHE: str(lm_cache)})
    return env


@pytest.fixture(scope="session")
def lm_cache(tmp_path_factory) -> Path:
    """One KenLM model cache per test session (the PTB 5-gram is estimated once), never the user's."""
    folder = tmp_path_factory.getbasetemp() / "textebm-lm-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(autouse=True)
def _lm_cache_env(monkeypatch, lm_cache):
    from lm_eval.ngram import ENV_LM_CACHE

    monkeypatch.setenv(ENV_LM_CACHE, str(lm_cache))


@pytest.fixture
def scratch_tmp(tmp_path, monkeypatch) -> Path:
    """The process's temporary folder, redirected, to check that nothing is left in it."""
    import tempfile

    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(scope="session")
def quadratic_tilt():
    """Builds a `QuadraticTilt`: a prior with exact log Z and exact samples, mild or sharp."""
    return QuadraticTilt
