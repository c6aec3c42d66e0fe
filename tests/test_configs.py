"""Every configs/<name>.py: loads, has a quick variant, documents its command and result."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from jaxmath.run.config import ConfigError, config_docstring, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("[!_]*.py"))


def test_there_are_experiments():
    assert len(CONFIGS) >= 9


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_with_its_quick_variant(path):
    default, quick = load_config(str(path)), load_config(f"{path}:quick")
    assert default.experiment == quick.experiment == path.stem
    module = importlib.import_module(f"experiments.{path.stem}")
    assert callable(module.run)
    with pytest.raises(ConfigError, match="unknown variant"):
        load_config(f"{path}:nope")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_docstring_holds_the_command_and_the_expected_result(path):
    doc = config_docstring(path)
    assert f"jaxmath run configs/{path.stem}.py --workdir" in doc
    assert f"jaxmath run configs/{path.stem}.py:quick --workdir" in doc
    assert re.search(r"^Expected", doc, re.MULTILINE), "no 'Expected ...' paragraph"
    assert "TBD" not in doc
