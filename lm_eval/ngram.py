"""Estimating n-gram LMs with KenLM's `lmplz` (modified Kneser-Ney) and caching real-data ones.

Estimation runs in a temporary folder (removed afterwards, also on failure) with bounded memory
(`lmplz -S`, spilling to that folder via `-T`); the ARPA file is converted with `build_binary`
and the binary is moved into place atomically. `--discount_fallback` is used only when lmplz
fails with its BadDiscountException (too few distinct counts, e.g. identical samples), and the
returned `NgramLM` says so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from lm_eval.errors import EstimationError, EvalError, InputError, KenLMToolsMissing
from lm_eval.kenlm_tools import KENLM_VERSION, KenLMTools, cache_root, find_tools
from lm_eval.text import ESCAPE_VERSION, Sentences, kenlm_line, read_sentences, text_sha256

DEFAULT_ORDER = 5
# lmplz's memory bound (-S): ample for PTB (peak RSS ~230 MB) and enough for larger corpora,
# which then spill sorted n-grams to the temporary folder (-T) instead of growing.
DEFAULT_MEMORY = "1G"
MIN_ORDER = 2
MAX_ORDER = 6  # KENLM_MAX_ORDER of the default kenlm builds (Python module and tools)
ENV_LM_CACHE = "TEXTEBM_LM_CACHE_DIR"
# lmplz's and build_binary's -S: a number, optionally with a unit (b, K, M, G, T, P, E) or % of the RAM.
_MEMORY = re.compile(r"^[0-9]+(?:\.[0-9]+)?[%bKMGTPE]?$")
# The first bytes of a KenLM binary model: anything else in the cache is damage, rebuilt without a load.
_BINARY_MAGIC = b"mmap lm "


@dataclass
class NgramLM:
    """A KenLM binary model file and how it was made."""

    path: str
    order: int
    discount_fallback: bool
    num_sentences: int
    cached: bool = False

    def load(self):
        return load_model(self.path)


def kenlm_module():
    """The `kenlm` Python module, or the error that says how to install it: asked before any work, too."""
    try:
        import kenlm
    except ImportError:  # it builds from source only, so a pip install can leave it out
        raise KenLMToolsMissing("KenLM's Python module is not installed: pip install kenlm (it compiles: a C++ "
                                "compiler, CMake, Boost and zlib; setup.sh installs them)") from None
    return kenlm


def load_model(path: str | Path):
    """Open a KenLM model (binary or ARPA) with the Python module; `InputError` when it cannot be read."""
    kenlm = kenlm_module()
    if not Path(path).is_file():
        raise InputError(f"KenLM model not found: {path}")
    try:
        return kenlm.Model(str(path))
    except (OSError, RuntimeError) as err:  # missing, unreadable, or not a model (KenLM names its C++ source)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"cannot load the KenLM model {path}: {reason.split(' threw ')[-1][:160]}") from None


def validate_memory(memory: str) -> None:
    """lmplz's -S as lmplz reads it, checked before any work (lmplz found a bad one after self-BLEU had run)."""
    if not _MEMORY.match(str(memory)):
        raise EstimationError(f"memory bound {memory!r} is not a size lmplz reads (a number with an optional unit "
                              "b, K, M, G, T, P, E, or a % of the RAM: e.g. 1G, 500M, 20%)")


def _bad_discount(stderr: str) -> bool:
    return "BadDiscountException" in stderr or "--discount_fallback" in stderr


def _error_line(stderr: str, tool: str) -> str:
    """The most telling line of a tool's error output, for a one-line message.

    KenLM names the exception on one line and explains it on the next ("MallocException ..." then
    "Cannot allocate memory for ... bytes"): both are kept, the explanation first."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "ERROR" in ln or "Exception" in ln or "error" in ln:
            if " threw " in ln:  # drop the C++ source location and signature before the exception
                ln = ln.split(" threw ", 1)[1]
            if "Exception" in ln and i + 1 < len(lines):
                ln = f"{lines[i + 1]} ({ln.rstrip('.')})"
            return f"{tool}: {ln[:300]}"
    return f"{tool}: {lines[-1][:300]}" if lines else f"{tool} failed without a message"


def _lmplz(tools: KenLMTools, text: Path, arpa: Path, tmp: Path, order: int, memory: str,
           fallback: bool) -> subprocess.CompletedProcess:
    cmd = [str(tools.lmplz), "-o", str(order), "-S", memory, "-T", str(tmp) + os.sep,
           "--text", str(text), "--arpa", str(arpa)]
    if fallback:
        cmd.append("--discount_fallback")
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, errors="replace")


def validate_order(order: int) -> None:
    # KenLM's query structures need at least bigrams ("assumes at least a bigram model").
    if not MIN_ORDER <= order <= MAX_ORDER:
        raise EstimationError(f"order must be between {MIN_ORDER} and {MAX_ORDER} for KenLM, got {order}")


def train_ngram_lm(sentences: Iterable[str], out_path: str | Path, order: int = DEFAULT_ORDER,
                   memory: str = DEFAULT_MEMORY, allow_fallback: bool = True,
                   tools: KenLMTools | None = None, role: str = "") -> NgramLM:
    """Estimate an order-`order` modified Kneser-Ney LM on `sentences` into binary `out_path`.

    `sentences` are normalised, unescaped sentences (tokens joined by single spaces);
    the KenLM specials are escaped here exactly as at scoring time. `role` names the model in
    error messages (e.g. "the real-text LM"), where several are estimated in one evaluation.
    """
    validate_order(order)
    validate_memory(memory)
    tools = tools or find_tools()
    out = Path(out_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot write the model to {out}: {err.strerror or err}") from None
    for_role = f" ({role})" if role else ""
    partial = out.parent / f".{out.name}.{os.getpid()}.partial"
    try:
        with tempfile.TemporaryDirectory(prefix="textebm-lmplz-") as tmp_name:
            tmp = Path(tmp_name)
            text = tmp / "text.txt"
            count = 0
            with open(text, "w", encoding="utf-8") as fh:
                for s in sentences:
                    fh.write(kenlm_line(s.split(" ")) + "\n")
                    count += 1
            if count == 0:
                raise EstimationError("cannot estimate a language model from no sentences")
            arpa = tmp / "model.arpa"
            fallback = False
            proc = _lmplz(tools, text, arpa, tmp, order, memory, fallback=False)
            if proc.returncode != 0 and allow_fallback and _bad_discount(proc.stderr):
                fallback = True
                proc = _lmplz(tools, text, arpa, tmp, order, memory, fallback=True)
            if proc.returncode != 0:
                if _bad_discount(proc.stderr) and not fallback:
                    raise EstimationError(
                        f"lmplz{for_role} could not estimate Kneser-Ney discounts (BadDiscountException: too "
                        "few distinct n-gram counts, e.g. repeated sentences) and the discount fallback is off")
                raise EstimationError(_error_line(proc.stderr, f"lmplz{for_role}"))
            proc = subprocess.run(
                [str(tools.build_binary), "-S", memory, "-T", str(tmp) + os.sep, str(arpa), str(partial)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True, errors="replace",
            )
            if proc.returncode != 0:
                raise EstimationError(_error_line(proc.stderr, f"build_binary{for_role}"))
            os.replace(partial, out)
    finally:
        if partial.exists():
            partial.unlink()
    return NgramLM(str(out), order, fallback, count)


def lm_cache_dir() -> Path:
    """Where real-data LMs are cached: `$TEXTEBM_LM_CACHE_DIR`, else `<kenlm cache>/models`."""
    env = os.environ.get(ENV_LM_CACHE)
    return Path(env).expanduser() if env else cache_root() / "models"


def cache_key(text_digest: str, order: int) -> str:
    """Name of a cached model: the normalised training text's digest, the order, the escaping version."""
    return f"text-{text_digest[:32]}-o{order}-esc{ESCAPE_VERSION}-kenlm{KENLM_VERSION}"


def _write_json_atomic(path: Path, data: dict) -> None:
    partial = path.parent / f".{path.name}.{os.getpid()}.partial"
    try:
        partial.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()


def _looks_binary(path: Path) -> bool:
    """Whether `path` starts as a KenLM binary does: a damaged cache file is rebuilt without KenLM reading it."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_BINARY_MAGIC)) == _BINARY_MAGIC
    except OSError:
        return False


def real_data_lm(train: str | Path | Sentences | list[str], order: int = DEFAULT_ORDER, memory: str = DEFAULT_MEMORY,
                 cache_dir: str | Path | None = None, tools: KenLMTools | None = None) -> NgramLM:
    """The LM of real training text, estimated once and then served from the cache.

    `train` is a file, or its normalised sentences (`lm_eval.text.read_sentences` / `normalize_lines`,
    or their `.sentences`).
    The cache key is the normalised text, not the file: `textebm evaluate` (the corpus's lines) and
    `textebm eval-ppl` (the corpus's file) share one model per corpus, and an edit invalidates it.
    """
    validate_order(order)
    directory = Path(cache_dir) if cache_dir else lm_cache_dir()
    source = "sentences"
    if isinstance(train, Sentences):
        source, train = train.path or source, train.sentences
    elif isinstance(train, (str, Path)):
        source = str(train)
        train = read_sentences(train, "training").sentences
    digest = text_sha256(train)
    key = cache_key(digest, order)
    binary, meta_path = directory / f"{key}.klm", directory / f"{key}.json"
    if binary.is_file() and meta_path.is_file() and _looks_binary(binary):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            fallback, sentences = meta["discount_fallback"], meta["num_sentences"]
            # a value of the wrong type is damage too: bool("false") read a hand-edited flag as True
            if not isinstance(fallback, bool) or not isinstance(sentences, int) or isinstance(sentences, bool):
                raise TypeError("a sidecar value of the wrong type")
            return NgramLM(str(binary), order, fallback, sentences, cached=True)
        except (ValueError, KeyError, TypeError):
            pass  # a damaged sidecar: rebuild below
    try:  # a cache that cannot take the new model (under a file, read-only) fails before the estimation
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as err:
        raise EvalError(f"cannot write the LM cache {directory}: {err.strerror or err} (${ENV_LM_CACHE} chooses "
                        "another folder)") from None
    lm = train_ngram_lm(train, binary, order=order, memory=memory, tools=tools, role="the real-text LM")
    meta = asdict(lm)
    meta.update(source=source, text_sha256=digest, escape_version=ESCAPE_VERSION, kenlm_version=KENLM_VERSION)
    meta.pop("cached", None)
    _write_json_atomic(meta_path, meta)
    return lm
