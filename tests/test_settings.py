"""Settings precedence: flag > ALKIT_* env > alkit.toml > default; bad values are clear errors."""

import pytest

from alkit.errors import ConfigError
from alkit.settings import SETTINGS, label_studio_token, load_settings, write_config_file


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    write_config_file(tmp_path, {"batch_size": 8, "model": "RN50", "seed": 3})
    environ = {"ALKIT_BATCH_SIZE": "16", "ALKIT_MODEL": "ViT-L-14"}
    settings = load_settings(tmp_path, flags={"batch_size": 64}, environ=environ)
    assert settings.batch_size == 64 and settings.sources["batch_size"] == "flag"
    assert settings.model == "ViT-L-14" and settings.sources["model"] == "env"
    assert settings.seed == 3 and settings.sources["seed"] == "alkit.toml"
    assert settings.precision == "fp32" and settings.sources["precision"] == "default"


def test_none_flag_does_not_override(tmp_path):
    write_config_file(tmp_path, {"model": "RN50"})
    assert load_settings(tmp_path, flags={"model": None}, environ={}).model == "RN50"


def _sample_value(spec):
    """A valid value for `spec` that differs from its default, as the user would type it in the environment."""
    if spec.type is bool:
        return (not spec.default), "false" if spec.default else "true"
    if spec.type in (int, float):
        value = spec.type((spec.minimum or 0) + 3)
        return value, str(value)
    return "x-custom", "x-custom"


@pytest.mark.parametrize("spec", SETTINGS, ids=lambda spec: spec.name)
def test_every_setting_reaches_the_user_through_env_and_file(tmp_path, spec):
    """Each declared setting works end to end: its default loads, `ALKIT_<NAME>` overrides it,
    and the same key in alkit.toml does too (a setting missing from the loader fails here)."""
    assert getattr(load_settings(tmp_path, environ={}), spec.name) == spec.default
    value, typed = _sample_value(spec)
    from_env = load_settings(tmp_path, environ={f"ALKIT_{spec.name.upper()}": typed})
    assert getattr(from_env, spec.name) == value and from_env.sources[spec.name] == "env"
    toml_value = f'"{value}"' if isinstance(value, str) else str(value).lower()
    (tmp_path / "alkit.toml").write_text(f"{spec.name} = {toml_value}\n")
    from_file = load_settings(tmp_path, environ={})
    assert getattr(from_file, spec.name) == value and from_file.sources[spec.name] == "alkit.toml"


@pytest.mark.parametrize(
    "toml_text, message",
    [
        ('batch_size = "big"\n', "batch_size must be int"),
        ("batch_size = true\n", "batch_size must be int"),
        ("model = 3\n", "model must be str"),
        ("nonsense = 1\n", "unknown setting"),
        ("batch_size = \n", "not valid TOML"),
        ('ls_token = "abc"\n', "holds a secret"),
    ],
)
def test_bad_config_file_is_a_config_error(tmp_path, toml_text, message):
    (tmp_path / "alkit.toml").write_text(toml_text)
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path, environ={})


def test_bad_env_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="ALKIT_SEED"):
        load_settings(tmp_path, environ={"ALKIT_SEED": "x"})


def test_write_refuses_secrets(tmp_path):
    with pytest.raises(ConfigError):
        write_config_file(tmp_path, {"ls_token": "secret"})
    assert not (tmp_path / "alkit.toml").exists()


def test_token_only_from_flag_or_env():
    assert label_studio_token(None, {"ALKIT_LS_TOKEN": "t1"}) == "t1"
    assert label_studio_token("t2", {"ALKIT_LS_TOKEN": "t1"}) == "t2"
    assert label_studio_token(None, {}) is None
