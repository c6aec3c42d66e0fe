"""Config files and --config overrides: parsing like absl flags, errors naming the key."""

from pathlib import Path

import ml_collections
import pytest

from jaxmath.run.config import (
    ConfigError,
    apply_overrides,
    config_docstring,
    config_to_dict,
    find_repo,
    load_config,
    parse_override,
    resolve_spec,
    split_spec,
)

FIXTURES = Path(__file__).parent / "fixtures"
ECHO = FIXTURES / "configs" / "echo.py"


@pytest.fixture(scope="module")
def base():
    return load_config(str(ECHO))


# ----------------------------------------------------------------------------- good overrides

GOOD = [
    # (override, dotted key, expected value, expected type)
    ("--config.seed=3", "seed", 3, int),
    ("config.seed=-2", "seed", -2, int),
    ("seed=1_000", "seed", 1000, int),
    ("--config.seed=1e4", "seed", 10000, int),
    ("--config.value=2", "value", 2.0, float),
    ("--config.value=-3e-4", "value", -3e-4, float),
    ("--config.use_bias=true", "use_bias", True, bool),
    ("--config.use_bias=T", "use_bias", True, bool),
    ("--config.use_bias=1", "use_bias", True, bool),
    ("--config.use_bias=FALSE", "use_bias", False, bool),
    ("--config.use_bias=0", "use_bias", False, bool),
    ("--config.use_bias", "use_bias", True, bool),
    ("--config.name=hello world", "name", "hello world", str),
    ("--config.name=3", "name", "3", str),
    ("--config.shape=(4, 5)", "shape", (4, 5), tuple),
    ("--config.shape=4,5", "shape", (4, 5), tuple),
    ("--config.shape=7", "shape", (7,), tuple),
    ("--config.shape=()", "shape", (), tuple),
    ("--config.layers=[1, 2, 3]", "layers", [1, 2, 3], list),
    ("--config.layers=(16,)", "layers", [16], list),
    ("--config.optim.learning_rate=3e-4", "optim.learning_rate", 3e-4, float),
    ("--config.width=16", "width", 16, int),            # placeholder(int)
    ("--config.width=none", "width", None, type(None)),
    ("--config.note=hello", "note", "hello", str),      # a None-valued field takes a literal
    ("--config.note=3", "note", 3, int),
    ("--config.note=true", "note", True, bool),
    ("--config.mode=nonfinite", "mode", "nonfinite", str),
]


def _get(config, key):
    for part in key.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize(("override", "key", "expected", "kind"), GOOD)
def test_override_parses_to_the_field_type(base, override, key, expected, kind):
    config = apply_overrides(base, [override])
    value = _get(config, key)
    assert value == expected
    assert type(value) is kind


def test_override_a_group_with_a_dict_literal(base):
    config = apply_overrides(base, ["--config.optim={'learning_rate': 0.1}"])
    assert isinstance(config.optim, ml_collections.ConfigDict)
    assert config.optim.to_dict() == {"learning_rate": 0.1}


def test_overrides_apply_in_order_and_leave_the_input_alone(base):
    config = apply_overrides(base, ["--config.seed=1", "--config.seed=2"])
    assert config.seed == 2
    assert base.seed == 0


def test_references_keep_ml_collections_semantics(base):
    # A derived field follows its source; overriding a linked field sets the shared value.
    config = apply_overrides(base, ["--config.num_steps=10"])
    assert (config.num_steps, config.eval_steps, config.twice_steps) == (10, 10, 20)
    config = apply_overrides(base, ["--config.eval_steps=7"])
    assert (config.num_steps, config.eval_steps, config.twice_steps) == (7, 7, 14)
    config = apply_overrides(base, ["--config.twice_steps=5"])  # replaces the computed field
    assert (config.num_steps, config.twice_steps) == (4, 5)
    assert base.num_steps == 4


def test_parse_override_direct():
    assert parse_override("0x10", str) == "0x10"
    assert parse_override("2.5", float) == 2.5
    with pytest.raises(ConfigError, match="needs a value"):
        parse_override(None, int, key="seed")


# ----------------------------------------------------------------------------- bad overrides

BAD = [
    ("--config.optim.learning_rat=1", r"unknown config key 'optim\.learning_rat'; "
                                      r"closest valid keys: optim\.learning_rate"),
    ("--config.learning_rate=1", r"unknown config key 'learning_rate'.*optim\.learning_rate"),
    ("--config.sed=1", r"unknown config key 'sed'; closest valid keys: seed"),
    ("--config.lr=1", r"unknown config key 'lr'; valid keys at the top level: "
                      r"checkpoint_every, eval_steps, experiment"),
    ("--config.optim.zz=1", r"unknown config key 'optim\.zz'; valid keys under 'optim': "
                            r"b1, learning_rate"),
    ("--config.seed.x=1", r"'seed' is a value of type int, not a group"),
    ("--config.seed=1.5", r"config key 'seed' expects int, got '1\.5'"),
    ("--config.num_steps=inf", r"config key 'num_steps' expects int, got 'inf'"),
    ("--config.seed=three", r"config key 'seed' expects int, got 'three'"),
    ("--config.value=fast", r"config key 'value' expects float, got 'fast'"),
    ("--config.use_bias=maybe", r"config key 'use_bias' expects bool, got 'maybe' "
                                r"\(expected true/false/1/0\)"),
    ("--config.use_bias=yes", r"expects bool, got 'yes'"),
    ("--config.shape=1 2", r"config key 'shape' expects tuple, got '1 2' .*quote"),
    ("--config.layers={1: 2}", r"config key 'layers' expects list, got '\{1: 2\}' .*dict"),
    ("--config.optim=3", r"config key 'optim' expects ConfigDict, got '3' .*dict literal"),
    ("--config.width=abc", r"config key 'width' expects int, got 'abc'"),
    ("--config.seed", r"config key 'seed' needs a value"),
    ("--config.=1", r"cannot parse override '--config\.=1'"),
    ("--config.a-b=1", r"cannot parse override '--config\.a-b=1'"),
]


@pytest.mark.parametrize(("override", "pattern"), BAD)
def test_bad_override_raises_config_error(base, override, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        apply_overrides(base, [override])
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_failing_override_applies_nothing(base):
    with pytest.raises(ConfigError):
        apply_overrides(base, ["--config.seed=5", "--config.nope=1"])
    assert base.seed == 0


def test_overrides_must_be_a_sequence(base):
    with pytest.raises(TypeError, match="sequence of strings"):
        apply_overrides(base, "--config.seed=1")


# ----------------------------------------------------------------------------- files and specs


def test_split_spec():
    assert split_spec("configs/a.py:quick") == ("configs/a.py", "quick")
    assert split_spec("configs/a.py") == ("configs/a.py", None)
    assert split_spec("a:quick") == ("a", "quick")
    assert split_spec("C:/x/a.py") == ("C:/x/a.py", None)


def test_load_config_variant_and_overrides():
    config = load_config(f"{ECHO}:quick", ["--config.value=4"])
    assert (config.num_steps, config.eval_steps, config.value) == (2, 2, 4.0)
    assert config.experiment == "echo"


def test_bare_name_is_found_in_the_repo_of_the_cwd(monkeypatch):
    monkeypatch.chdir(FIXTURES / "experiments")
    assert find_repo() == FIXTURES.resolve()
    path, variant = resolve_spec("echo:quick")
    assert (path, variant) == (ECHO.resolve(), "quick")
    assert load_config("echo:quick").num_steps == 2


def test_config_docstring_and_to_dict(base):
    assert config_docstring(ECHO).startswith("Echo: doubles config.value")
    assert config_docstring(FIXTURES / "configs" / "nodoc.py") == ""
    resolved = config_to_dict(base)
    assert resolved["shape"] == [2, 3]
    assert resolved["eval_steps"] == 4 and resolved["twice_steps"] == 8
    assert resolved["width"] is None and resolved["optim"] == {"learning_rate": 1e-3, "b1": 0.9}


def _write(tmp_path, text, name="c.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_FILES = [
    (lambda d: str(d / "missing.py"), r"config file '.*missing\.py' not found"),
    (lambda d: f"{ECHO}:huge", r"echo\.py: get_config\('huge'\) failed: unknown variant 'huge'"),
    (lambda d: f"{FIXTURES / 'configs' / 'nodoc.py'}:quick",
     r"has no variants \(get_config\(\) takes no argument\), got variant 'quick'"),
    (lambda d: _write(d, "x = 1\n"), r"defines no get_config\(\)"),
    (lambda d: _write(d, "def get_config(:\n"), r"c\.py' line 1: invalid syntax"),
    (lambda d: _write(d, "def get_config(v=None):\n    return 3\n"),
     r"get_config\(\) must return an ml_collections\.ConfigDict, got int"),
]


@pytest.mark.parametrize(("make_spec", "pattern"), BAD_FILES)
def test_bad_config_file(tmp_path, make_spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(make_spec(tmp_path))


def test_plain_dict_from_get_config_is_accepted(tmp_path):
    spec = _write(tmp_path, "def get_config():\n    return {'seed': 1, 'experiment': 'x'}\n")
    config = load_config(spec, ["--config.seed=2"])
    assert isinstance(config, ml_collections.ConfigDict) and config.seed == 2
