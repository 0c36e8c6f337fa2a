"""The README's promises that code can check: its first commands, and every config default
(in docs/configuration.md, the page the README links for them)."""

import re
from dataclasses import fields
from pathlib import Path

from textebm.config import Config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONFIG_PAGE = ROOT / "docs" / "configuration.md"


def test_every_config_key_is_documented_with_its_default():
    assert "(docs/configuration.md)" in README
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", CONFIG_PAGE.read_text(encoding="utf-8"), re.M))
    for field in fields(Config):
        assert field.name in rows, f"docs/configuration.md does not document config key {field.name}"
        assert rows[field.name] == str(field.default), \
            f"docs/configuration.md gives {field.name} the default {rows[field.name]}"


def test_ci_runs_the_readme_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    setup, tests = commands[0], commands[1]
    assert "TEXTEBM_DATA_DIR" not in tests  # true on a fresh clone: the tests need no corpus
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert setup in ci and tests in ci  # CI runs both as written (and exports TEXTEBM_DATA_DIR itself)
    assert any(line.startswith("export TEXTEBM_DATA_DIR=") for line in ci)
