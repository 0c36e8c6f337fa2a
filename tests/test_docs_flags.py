"""Every command-line option that README.md, data/README.md and docs/*.md write (in a code block, or
backquoted in prose: `--max-steps`, `--set`, `-n`) exists in the parser of the command it is written for.

The parsers are the code's own: `textebm.cli.build_parser()`, and the parser that each other entry point
(`python -m server`, `python -m bench`, `python -m bench.NAME`, `bash bench/gpu_acceptance.sh`,
`python -m lm_eval.kenlm_tools`) builds in its `main` or `parse_args`, caught when it is about to parse.
An option belongs to the command whose command line it follows (`textebm SUBCOMMAND ...`, `python -m
bench ...`; also a backquoted `SUBCOMMAND --option`); an option outside any command line need only exist
in one of the toolkit's parsers. Options of other programs are allowed by OTHER_PROGRAMS, and only there."""

from __future__ import annotations

import argparse
import functools
import importlib
import re
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "data" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# The other programs that the docs show, each with the options the docs give it (nothing else is allowed):
# the option of a foreign program must follow that program's name, or sit in prose outside a command line.
OTHER_PROGRAMS = {
    "pytest": {"-m"},  # `pytest -m "cuda and not slow"`
    "pip": {"--no-binary", "--no-deps"},  # `pip download --no-binary kenlm --no-deps kenlm==0.3.0`
    "torchrun": {"--standalone", "--nproc_per_node"},  # data parallel training (docs/training.md)
    "tensorboard": {"--logdir"},
    "lmplz": {"-o", "-S", "-T", "--skip_symbols", "--discount_fallback"},  # KenLM's estimator (docs/fppl-rppl.md)
    "curl": {"-s", "-X", "-H", "-d", "-w"},  # requests to the server (docs/server.md)
    "python": {"-c"},  # `python -c "..."` (docs/fppl-rppl.md); `python -m MODULE` is the module's command
    "/usr/bin/time": {"-v"},
    "grep": {"-v"},
    "sort": {"-u"},
    "du": {"-b"},
    "mkdir": {"-p"},
}

FENCE = re.compile(r"^\s*(```|~~~)")
# `--long-name` or `-x`, after a space, `[`, `(` or `|` (not `text-<sha>-o5`, `-log p(x)`, `-rf`)
OPTION = re.compile(r"(?<![^\s\[(|])(?:--[A-Za-z][\w-]*|-[A-Za-z](?![\w-]))")
PATH = r"(?<!\S)(?:\S*/)?"  # a command starts after a space
END = r"(?=\s|$)"  # and its name ends before one
TOOLKIT = re.compile(  # where a command of the toolkit starts; the group names its parser
    rf"{PATH}(?:python3?\s+-m\s+|-m\s+)?(?P<textebm>textebm){END}"
    rf"|{PATH}python3?\s+-m\s+(?P<module>server|bench(?:\.\w+)?|lm_eval\.\w+){END}"
    rf"|{PATH}python3?\s+bench/(?P<script>\w+)\.py{END}"
    rf"|(?<!\S)bash\s+bench/(?P<shell>gpu_acceptance)\.sh{END}")
OTHER = re.compile(PATH + r"(?:python3?\s+-m\s+)?(?P<other>" + "|".join(
    re.escape(name) for name in sorted(OTHER_PROGRAMS, key=len, reverse=True)) + r")" + END)
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class _Caught(Exception):
    pass


def _caught_parser(call) -> argparse.ArgumentParser:
    """The parser that `call` builds, caught at its parse_args: nothing after the parsing runs."""
    def catch(parser, *args, **kwargs):
        raise _Caught(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch):
        try:
            call()
        except _Caught as caught:
            return caught.args[0]
    raise AssertionError(f"{call} parsed no command line")


@functools.cache
def parsers() -> dict[str, argparse.ArgumentParser]:
    """The toolkit's parsers by command: textebm, server, bench, bench.NAME, lm_eval.kenlm_tools."""
    from textebm.cli import build_parser

    found = {"textebm": build_parser()}
    for name in ["server.launch", "bench.__main__", "lm_eval.kenlm_tools",
                 *(f"bench.{path.stem}" for path in sorted((ROOT / "bench").glob("*.py"))
                   if path.stem != "__main__" and "ArgumentParser(" in path.read_text(encoding="utf-8"))]:
        module = importlib.import_module(name)
        entry = getattr(module, "parse_args", None) or getattr(module, "main", None)
        if entry is None:  # bench/eval_ppl.py: builds the eval-ppl subcommand's parser, not a command of its own
            continue
        found[name.removesuffix(".launch").removesuffix(".__main__")] = _caught_parser(lambda entry=entry: entry([]))
    return found


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((action.choices for action in parser._actions if isinstance(action, argparse._SubParsersAction)), {})


@functools.cache
def every_option() -> frozenset[str]:
    """Options of any toolkit parser or subparser, and those allowed to the other programs."""
    found, todo = set(), list(parsers().values())
    while todo:
        parser = todo.pop()
        found |= _options(parser)
        todo += _subparsers(parser).values()
    return frozenset(found.union(*OTHER_PROGRAMS.values()))


def _command(program: str, words: list[str]) -> tuple[str, set[str], str | None]:
    """(name, options, error) of the command that `program` runs, descending into subcommands by the words
    that follow it; options along the way count too. error: a subcommand it names that does not exist."""
    parser, name, options = parsers().get(program), program, set()
    if parser is None:
        return name, set(), f"no such command: {program}"
    options |= _options(parser)
    for word in words:
        choices = _subparsers(parser)
        if not choices or word not in choices:
            if choices and re.fullmatch(r"[a-z][\w-]*", word):
                return name, options, f"no such subcommand: {name} {word}"
            break
        parser, name = choices[word], f"{name} {word}"
        options |= _options(parser)
    return name, options, None


def check(text: str, *, code: bool) -> list[str]:
    """What is wrong with the options in a piece of a page: a code line (its comment passed on its own, as
    prose) or a backquoted span. Each option is checked against the command it follows in `text`."""
    if code:
        text = QUOTED.sub(lambda m: " " * len(m.group()), text)  # a quoted argument is no option
    elif re.match(r"[a-z][\w-]*\s+-", text) and text.split()[0] in _subparsers(parsers()["textebm"]):
        text = "textebm " + text  # `train --resume`: textebm's subcommand
    toolkit = list(TOOLKIT.finditer(text))
    other = [m for m in OTHER.finditer(text)  # `python -m bench` is no `python`
             if not any(t.start() <= m.start() < t.end() for t in toolkit)]
    starts = sorted([*toolkit, *other], key=lambda m: m.start())
    problems = []
    for match, following in zip(starts, [*starts[1:], None]):
        end = following.start() if following else len(text)
        if match.re is OTHER:
            name, options, error = match["other"], OTHER_PROGRAMS[match["other"]], None
        else:
            program = (match["textebm"] or match["module"] or (match["script"] and f"bench.{match['script']}")
                       or f"bench.{match['shell']}")
            words = text[match.end():end].split()
            name, options, error = _command(program, words[:next((i for i, w in enumerate(words) if w[0] == "-"),
                                                                  len(words))])
        problems += [error] if error else []
        if name == "bench":  # and the benchmarks that `--only` names exist
            from bench.__main__ import BENCHMARKS

            problems += [f"bench --only {benchmark}: no such benchmark" for value in
                         re.findall(r"--only\s+([\w,]+)", text[match.end():end]) for benchmark in value.split(",")
                         if benchmark not in BENCHMARKS]
        problems += [f"{name} {option}" for option in OPTION.findall(text, match.end(), end) if option not in options]
    outside = OPTION.findall(text, 0, starts[0].start() if starts else len(text))
    problems += [f"{option} (in no parser)" for option in outside if option not in every_option()]
    return problems


def pieces(path: Path) -> list[tuple[int, str, bool]]:
    """(line number, text, is code) of each part of a page to check: each code block's commands (lines
    continued after a backslash, or indented under a command, are one), their comments apart (a comment's
    backquoted spans apart again); and each backquoted span of the prose. Code blocks are fenced, or
    indented by four spaces after a blank line."""
    found, fenced, indented, previous, command = [], False, False, "", None  # command: its index in found
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            fenced, command = not fenced, None
            continue
        indented = not fenced and line.startswith("    ") and (indented or not previous.strip())
        previous = line
        if not (fenced or indented):
            command = None
            found += [(number, span, False) for span in re.findall(r"`([^`]+)`", line)]
            continue
        code, _, comment = (line[4:] if indented else line).partition(" #")
        if code.lstrip().startswith("#"):
            code, comment = "", code.lstrip()[1:]
        if comment.strip():  # prose: its backquoted spans apart (`textebm sample -n 3`), then the rest
            found += [(number, span, False) for span in re.findall(r"`([^`]+)`", comment)]
            found.append((number, re.sub(r"`[^`]+`", " ", comment), False))
        above = found[command][1] if command is not None else ""
        if above.endswith("\\") or (code[:1].isspace() and TOOLKIT.search(above) and not TOOLKIT.search(code)):
            found[command] = (found[command][0], above.rstrip("\\") + " " + code.strip(), True)
        else:
            command = len(found)
            found.append((number, code.rstrip(), True))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_option_a_page_names_exists_in_its_command(page):
    wrong = [f"{page.relative_to(ROOT)}:{number}: {problem}"
             for number, text, code in pieces(page) for problem in check(text, code=code)]
    assert not wrong, "options the code does not have:\n" + "\n".join(wrong)


def test_the_parsers_are_found():
    assert {"textebm", "server", "bench", "bench.gpu_acceptance", "bench.time_to_quality"} <= set(parsers())
    assert "--max-steps" in _command("textebm", ["train"])[1] and "--port" in _command("server", [])[1]


def test_the_pages_show_the_main_commands():
    code = "\n".join(text for page in PAGES for _, text, is_code in pieces(page) if is_code)
    for command in ("textebm train", "textebm evaluate", "textebm serve", "textebm score", "textebm reconstruct",
                    "textebm interpolate", "python -m bench"):
        assert command in code, f"no code block runs {command}"


def test_pieces_join_continued_commands_and_keep_comments_apart(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Run `textebm sample -n 3`:\n\n```sh\ntextebm train --corpus ptb \\\n"
                    "    --max-steps 2   # `textebm sample --seed 1` then\n"
                    "textebm chain --checkpoint RUN\n              [--steps 0,40]\n```\n", encoding="utf-8")
    assert pieces(page) == [(1, "textebm sample -n 3", False), (4, "textebm train --corpus ptb  --max-steps 2", True),
                            (5, "textebm sample --seed 1", False), (5, "   then", False),
                            (6, "textebm chain --checkpoint RUN [--steps 0,40]", True)]


@pytest.mark.parametrize("text, code, problems", [
    ("textebm train --corpus ptb --max-steps 10 --nope 3", True, ["textebm train --nope"]),
    ("textebm sample --max-steps 10", True, ["textebm sample --max-steps"]),  # train's, not sample's
    ("torchrun --standalone --nproc_per_node 2 -m textebm train --corpus ptb", True, []),
    ("torchrun --nope 2 -m textebm train", True, ["torchrun --nope"]),
    ("textebm trian --corpus ptb", True, ["no such subcommand: textebm trian", "textebm --corpus"]),
    ("textebm COMMAND --help", True, []),  # a placeholder: the options of `textebm` itself
    ("python -m bench --only sampling --repeats 3 && bash bench/gpu_acceptance.sh --budget-s 60", True, []),
    ("python -m bench --only sampling,nope", True, ["bench --only nope: no such benchmark"]),
    ("python -m bench.nope --out x", True, ["no such command: bench.nope", "bench.nope --out"]),
    ('textebm interpolate --checkpoint RUN --from "a --b" --to "c"', True, []),
    ("sample -n 3 --seed 1", False, []),
    ("sample --steps 3", False, ["textebm sample --steps"]),
    ("--steps", False, []),  # prose: an option of some command (chain's)
    ("--stpes", False, ["--stpes (in no parser)"]),
])
def test_options_are_checked_against_the_command_they_follow(text, code, problems):
    assert check(text, code=code) == problems
