"""Finding, and if needed building, KenLM's command-line tools `lmplz` and `build_binary`.

No wheel ships them, so `python -m lm_eval.kenlm_tools install` compiles them once from the
kenlm 0.3.0 source distribution (which holds the full C++ tree) with CMake, into the user's
cache. Search order when they are needed: the folder in `$TEXTEBM_KENLM_BIN`, then `PATH`,
then `${XDG_CACHE_HOME:-~/.cache}/textebm/kenlm/bin`.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lm_eval.errors import KenLMToolsMissing

KENLM_VERSION = "0.3.0"
TOOLS = ("lmplz", "build_binary")
ENV_BIN = "TEXTEBM_KENLM_BIN"
INSTALL_COMMAND = f"{sys.executable} -m lm_eval.kenlm_tools install"
APT_HINT = (
    "needs cmake, a C++ compiler and Debian's libboost-program-options-dev libboost-system-dev "
    "libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev (./setup.sh installs them)"
)


def cache_root() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/textebm/kenlm`: home of the tools and of cached models."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "textebm" / "kenlm"


def cache_bin_dir() -> Path:
    return cache_root() / "bin"


@dataclass(frozen=True)
class KenLMTools:
    lmplz: Path
    build_binary: Path


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _in_dir(directory: Path) -> KenLMTools | None:
    paths = [directory / name for name in TOOLS]
    if all(_executable(p) for p in paths):
        return KenLMTools(*paths)
    return None


def find_tools() -> KenLMTools:
    """Locate both tools (env var, then PATH, then the cache) or say how to install them."""
    env_dir = os.environ.get(ENV_BIN)
    if env_dir:
        found = _in_dir(Path(env_dir).expanduser())
        if found is None:
            raise KenLMToolsMissing(
                f"${ENV_BIN} is set to {env_dir}, but lmplz and build_binary are not both there; "
                f"unset it or install them with: {INSTALL_COMMAND}"
            )
        return found
    on_path = [shutil.which(name) for name in TOOLS]
    if all(on_path):
        return KenLMTools(*(Path(p) for p in on_path))  # type: ignore[arg-type]
    found = _in_dir(cache_bin_dir())
    if found is None:
        raise KenLMToolsMissing(
            f"KenLM's lmplz and build_binary were not found (${ENV_BIN}, PATH, {cache_bin_dir()}); "
            f"install them with: {INSTALL_COMMAND}"
        )
    return found


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    """Run a build step with its output in `log`; on failure, fail with the log's tail."""
    with open(log, "ab") as fh:
        fh.write(("\n$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"`{' '.join(cmd[:3])} ...` failed (exit {proc.returncode}):\n" + "\n".join(tail))


def _safe_extract(archive: Path, dest: Path) -> Path:
    """Unpack the sdist, refusing members that would land outside `dest`."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not str(target).startswith(str(dest.resolve()) + os.sep):
                raise RuntimeError(f"unsafe path in {archive.name}: {member.name}")
            if not (member.isfile() or member.isdir()):
                raise RuntimeError(f"unexpected member type in {archive.name}: {member.name}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.11.4; members were checked above
            tar.extractall(dest)
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise RuntimeError(f"unexpected layout of {archive.name}")
    return roots[0]


def build_tools(dest: Path, jobs: int | None = None, log: Path | None = None) -> KenLMTools:
    """Download the kenlm sdist, compile lmplz and build_binary, place them in `dest` atomically.

    `pip download --no-binary kenlm` (not `:all:`, which would also compile kenlm's build
    requirements such as cmake from source, taking many minutes) fetches the source archive.
    """
    dest.mkdir(parents=True, exist_ok=True)
    jobs = jobs or max(1, min(os.cpu_count() or 1, 4))
    with tempfile.TemporaryDirectory(prefix="kenlm-build-", dir=dest.parent) as tmp:
        work = Path(tmp)
        log = log or work / "build.log"
        _run(
            [sys.executable, "-m", "pip", "download", "--no-binary", "kenlm", "--no-deps",
             f"kenlm=={KENLM_VERSION}", "-d", str(work / "dl"), "-q"],
            log,
        )
        archives = list((work / "dl").glob("kenlm-*.tar.gz"))
        if len(archives) != 1:
            raise RuntimeError(f"pip download gave no kenlm source archive in {work / 'dl'}")
        src = _safe_extract(archives[0], work / "src")
        build = work / "build"
        _run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              "-DCOMPILE_TESTS=OFF", "-DENABLE_PYTHON=OFF"], log)
        _run(["cmake", "--build", str(build), "--target", *TOOLS, "-j", str(jobs)], log)
        for name in TOOLS:
            built = build / "bin" / name
            if not _executable(built):
                raise RuntimeError(f"the build finished without producing {built}")
            partial = dest / f".{name}.partial"
            shutil.copy2(built, partial)
            os.replace(partial, dest / name)
    found = _in_dir(dest)
    assert found is not None
    return found


def install(force: bool = False, dest: Path | None = None) -> KenLMTools:
    """Build the tools into the cache unless they are already there (a no-op then)."""
    dest = dest or cache_bin_dir()
    dest.mkdir(parents=True, exist_ok=True)
    # One builder at a time: a second `install` waits, then finds the tools in place.
    with open(dest.parent / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _in_dir(dest)
        if found is not None and not force:
            print(f"KenLM tools already installed in {dest}")
            return found
        if shutil.which("cmake") is None:
            raise RuntimeError(f"cmake not found; building lmplz {APT_HINT}")
        print(f"building KenLM {KENLM_VERSION} lmplz and build_binary into {dest} (about a minute) ...",
              flush=True)
        tools = build_tools(dest)
        print(f"installed {tools.lmplz} and {tools.build_binary}")
        return tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lm_eval.kenlm_tools",
                                     description="Install or locate KenLM's lmplz and build_binary.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="compile the tools into the cache (no-op if present)")
    p_install.add_argument("--force", action="store_true", help="rebuild even if present")
    sub.add_parser("where", help="print where the tools are found")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(force=args.force)
        else:
            tools = find_tools()
            print(tools.lmplz)
            print(tools.build_binary)
    except KenLMToolsMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"error: building the KenLM tools failed; it {APT_HINT}\n{err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. an unwritable cache folder
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
