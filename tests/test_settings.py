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


def test_every_setting_has_env_name_and_default_type():
    for spec in SETTINGS:
        assert spec.env_var == "ALKIT_" + spec.name.upper()
        assert spec.default is None or isinstance(spec.default, spec.type)


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
