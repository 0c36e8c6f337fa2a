"""The documentation against the repository: every relative link and anchor in README.md, docs/ and
data/README.md resolves (with GitHub's heading anchors), and docs/python.md's code runs. (That every
option the pages name exists in its command: tests/test_docs_flags.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "data" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _split(text: str) -> tuple[list[str], list[list[str]]]:
    """A page's lines outside code blocks, and each code block's lines (fenced, or indented by four
    spaces after a blank line; indented blocks lose those four spaces)."""
    prose, blocks, block, indented = [], [], None, None
    previous = ""
    for line in text.splitlines():
        if block is not None:
            if FENCE.match(line):
                blocks.append(block)
                block = None
            else:
                block.append(line)
        elif FENCE.match(line):
            block = []
        elif line.startswith("    ") and (indented is not None or not previous.strip()):
            indented = (indented or []) + [line[4:]]
        else:
            if indented is not None and line.strip():
                blocks.append(indented)
                indented = None
            prose.append(line)
        previous = line
    if indented is not None:
        blocks.append(indented)
    return prose, blocks


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text (a link's text only), lower-cased, every character but
    letters, digits, `_`, `-` and spaces dropped, spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a page, repeats numbered as GitHub numbers them (-1, -2, ...)."""
    prose, _ = _split(path.read_text(encoding="utf-8"))
    counts: dict[str, int] = {}
    found = set()
    for line in prose:
        if match := HEADING.match(line):
            slug = github_anchor(match.group(2))
            found.add(f"{slug}-{counts[slug]}" if slug in counts else slug)
            counts[slug] = counts.get(slug, 0) + 1
    return found


def test_github_anchor_rules():
    assert github_anchor("`textebm chain`: prior Langevin chains") == "textebm-chain-prior-langevin-chains"
    assert github_anchor("The VAE baseline (`model=vae`)") == "the-vae-baseline-modelvae"
    assert github_anchor("GPUs, mixed precision, more than one process") == "gpus-mixed-precision-more-than-one-process"
    assert github_anchor("Is z used? Diagnostics") == "is-z-used-diagnostics"
    assert github_anchor("Load test and `--workers` (1.5x)") == "load-test-and---workers-15x"


def _links(path: Path) -> list[str]:
    """The page's link targets outside code blocks and inline code."""
    prose, _ = _split(path.read_text(encoding="utf-8"))
    return [target for line in prose for target in LINK.findall(re.sub(r"`[^`]*`", "``", line))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not ours to check
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / unquote(file_part)).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_python_page_runs_and_samples_as_the_command_does(tmp_path, capsys):
    """docs/python.md's code block, run on a small trained run: what it names exists, and its sentences
    are the ones `textebm sample` prints for the same options and seed."""
    from server_fixtures import train_tiny_run

    from textebm.cli import main

    run = train_tiny_run(tmp_path / "run")
    blocks = _split((ROOT / "docs" / "python.md").read_text(encoding="utf-8"))[1]
    code = "\n".join(next(block for block in blocks if block and block[0] == "import torch"))
    assert code.count('"RUN"') == 1
    names: dict = {}
    exec(compile(code.replace('"RUN"', repr(str(run))), "docs/python.md", "exec"), names)
    capsys.readouterr()  # (training's output)
    assert main(["sample", "--checkpoint", str(run), "-n", "3", "--seed", "0", "--temperature", "0.8"]) == 0
    assert capsys.readouterr().out.splitlines() == names["sentences"]
    latent = names["model"].prior.latent_dim
    assert tuple(names["z_prior"].shape) == (4, latent) and tuple(names["z_text"].shape) == (2, latent)
    assert len(names["scores"].per_token) == 2 and names["reconstruction"].inputs == ["<unk> <unk> <unk>"]
    assert [t for t, _ in names["path"]] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_python_training_block_trains_and_resumes_a_run(tmp_path, capsys, small_corpus, tiny_overrides):
    """docs/python.md's training block, on the synthetic corpus with the tiny model and a few steps: the run
    folder it writes is one `textebm` reads, and the resumed run goes on from the first one's step."""
    from textebm.model.runs import load_run

    blocks = _split((ROOT / "docs" / "python.md").read_text(encoding="utf-8"))[1]
    code = "\n".join(next(block for block in blocks if block and block[0].startswith("from textebm.config")))
    for old, new in [('"ptb", ["latent_dim=16", "seed=1"]', f"{str(small_corpus)!r}, {[*tiny_overrides, 'seed=1']!r}"),
                     ('"runs/ptb-small"', repr(str(tmp_path / "run"))), ("max_steps=200", "max_steps=2"),
                     ("max_steps=400", "max_steps=4")]:
        assert old in code, old
        code = code.replace(old, new)
    names: dict = {"__name__": "docs"}
    exec(compile(code, "docs/python.md", "exec"), names)
    printed = capsys.readouterr().out
    assert "corpus " in printed and "model: " in printed
    assert (names["result"].step, names["result"].stopped_by) == (4, "max_steps")
    assert load_run(tmp_path / "run").step == 4 and (tmp_path / "run" / "learning_curves.png").is_file()

