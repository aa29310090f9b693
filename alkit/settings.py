"""Project settings with one precedence rule: flag > environment (`ALKIT_*`) > alkit.toml > default.

Every setting is declared once in `SETTINGS` (name, type, default, help); the environment
variable is `ALKIT_<NAME>` and the alkit.toml key is `<name>` at top level. Secrets (the
Label Studio token) are never settings: they come only from a flag or `ALKIT_LS_TOKEN`,
and alkit.toml holding one is refused.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from alkit.atomic import atomic_write_text
from alkit.errors import ConfigError

CONFIG_FILE = "alkit.toml"
TOKEN_ENV = "ALKIT_LS_TOKEN"
SECRET_KEYS = frozenset({"ls_token", "token", "api_key", "label_studio_token"})


@dataclass(frozen=True)
class SettingSpec:
    name: str
    type: type
    default: Any
    help: str
    optional: bool = False
    minimum: float | None = None  # inclusive range of numeric settings
    maximum: float | None = None

    @property
    def env_var(self) -> str:
        return f"ALKIT_{self.name.upper()}"


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("db", str, "alkit.db", "database: a file name (SQLite) or any SQLAlchemy URL"),
    SettingSpec("model", str, "ViT-B-32", "open_clip architecture used by `alkit embed`"),
    SettingSpec("pretrained", str, None, "open_clip pretrained tag or local checkpoint path", optional=True),
    SettingSpec("batch_size", int, 32, "images per forward pass when embedding", minimum=1),
    SettingSpec("workers", int, 2, "image decoding worker processes when embedding", minimum=0),
    SettingSpec("device", str, "auto", "cpu, cuda or auto"),
    SettingSpec("precision", str, "fp32", "fp32, fp16, bf16 or int8 (CPU dynamic quantisation: its own embedding spec)"),
    SettingSpec("template", str, "a photo of a {}", "class prompt template; {} is the class name"),
    SettingSpec("max_pixels", int, 89_478_485, "images with more pixels are rejected as decompression bombs", minimum=1),
    SettingSpec("seed", int, 0, "random seed for selection and fitting", minimum=0, maximum=2**32 - 1),
    SettingSpec("ls_url", str, None, "Label Studio base URL", optional=True),
    SettingSpec("ls_project_id", int, None, "Label Studio project id", optional=True),
    SettingSpec("ls_local_files_root", str, None, "server's LOCAL_FILES_DOCUMENT_ROOT", optional=True),
    SettingSpec("ls_image_url_prefix", str, None, "URL prefix that serves the images over HTTP", optional=True),
    SettingSpec("ls_pre_annotate", bool, True, "send the model's predicted class with each task (pre-selected in Label Studio)"),
    SettingSpec("ls_max_skips", int, 2, "an image skipped this many times in Label Studio is excluded from selection (0: never)"),
    SettingSpec(
        "ls_round_max_age_hours", float, None,
        "`alkit sync` closes pushed rounds older than this; their waiting images go back to the pool", optional=True,
    ),
)
SPECS_BY_NAME = {spec.name: spec for spec in SETTINGS}


@dataclass(frozen=True)
class Settings:
    values: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)  # name -> "flag" | "env" | "alkit.toml" | "default"

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def _coerce(spec: SettingSpec, raw: Any, origin: str) -> Any:
    value = _coerce_type(spec, raw, origin)
    if value is None or spec.type not in (int, float):
        return value
    if isinstance(value, float) and value != value:
        raise ConfigError(f"{origin}: {spec.name} must be a number, got nan; fix or remove the value")
    if (spec.minimum is not None and value < spec.minimum) or (spec.maximum is not None and value > spec.maximum):
        bounds = " and ".join(
            part for part in (
                None if spec.minimum is None else f">= {spec.minimum:g}",
                None if spec.maximum is None else f"<= {spec.maximum:g}",
            ) if part
        )
        raise ConfigError(f"{origin}: {spec.name} must be {bounds}, got {value}; fix or remove the value")
    return value


def _coerce_type(spec: SettingSpec, raw: Any, origin: str) -> Any:
    if raw is None:
        return None
    if spec.type is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return raw.lower() in {"1", "true", "yes", "on"}
    elif spec.type in (int, float):
        accepted = (int,) if spec.type is int else (int, float)  # an int setting refuses 2.5 rather than round it
        if isinstance(raw, accepted) and not isinstance(raw, bool):
            return spec.type(raw)
        if isinstance(raw, str):
            try:
                return spec.type(raw)
            except ValueError:
                pass
    elif spec.type is str:
        if isinstance(raw, str):
            return raw
        if origin == "flag":
            return str(raw)
    raise ConfigError(
        f"{origin}: {spec.name} must be {spec.type.__name__}, got {raw!r} ({type(raw).__name__}); "
        "fix or remove the value"
    )


def read_config_file(project_dir: Path) -> dict[str, Any]:
    """The raw contents of alkit.toml, validated for unknown keys and secrets."""
    path = project_dir / CONFIG_FILE
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: not valid TOML ({reason}); fix the file or run `alkit init` in a new directory") from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}; fix its permissions") from None
    secrets = SECRET_KEYS & set(data)
    if secrets:
        raise ConfigError(
            f"{path} holds a secret ({', '.join(sorted(secrets))}); delete that line and pass the token "
            f"via {TOKEN_ENV} or --token"
        )
    unknown = sorted(set(data) - set(SPECS_BY_NAME))
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(SPECS_BY_NAME)}"
        )
    return data


def load_settings(
    project_dir: Path,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting by precedence: flag > env > alkit.toml > default."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    file_values = read_config_file(project_dir)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SETTINGS:
        if spec.name in flags:
            values[spec.name], sources[spec.name] = _coerce(spec, flags[spec.name], "flag"), "flag"
        elif spec.env_var in environ:
            values[spec.name] = _coerce(spec, environ[spec.env_var], f"environment variable {spec.env_var}")
            sources[spec.name] = "env"
        elif spec.name in file_values:
            values[spec.name] = _coerce(spec, file_values[spec.name], f"{CONFIG_FILE} key {spec.name!r}")
            sources[spec.name] = CONFIG_FILE
        else:
            values[spec.name], sources[spec.name] = spec.default, "default"
    unknown_flags = set(flags) - set(SPECS_BY_NAME)
    if unknown_flags:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown_flags))}")
    return Settings(values=values, sources=sources)


def write_config_file(project_dir: Path, updates: Mapping[str, Any]) -> Path:
    """Merge `updates` into alkit.toml atomically; refuses secrets and unknown names."""
    import tomli_w

    bad = (SECRET_KEYS & set(updates)) | (set(updates) - set(SPECS_BY_NAME))
    if bad:
        raise ConfigError(f"refusing to write {', '.join(sorted(bad))} to {CONFIG_FILE}")
    data = read_config_file(project_dir)
    for name, value in updates.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = _coerce(SPECS_BY_NAME[name], value, "value")
    path = project_dir / CONFIG_FILE
    header = "# alkit project settings. Precedence: flag > ALKIT_* environment variable > this file > default.\n"
    atomic_write_text(path, header + tomli_w.dumps(data))
    return path


def label_studio_token(flag_value: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The Label Studio token from `--token` or `ALKIT_LS_TOKEN`; never from a file."""
    environ = os.environ if environ is None else environ
    return flag_value or environ.get(TOKEN_ENV) or None
