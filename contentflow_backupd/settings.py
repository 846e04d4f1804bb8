"""Settings: environment (``BACKUPD_*``, nested with ``__``) over an optional TOML file over
credential files (``$CREDENTIALS_DIRECTORY``, ``/run/secrets``) over defaults.

pydantic-settings resolves the precedence and merges the nested sections: the TOML file is its
``TomlConfigSettingsSource`` (with our error messages); credential files are our own source,
because its ``SecretsSettingsSource`` differs where it matters here (see :class:`CredentialFiles`).

Only ``wiring`` turns settings into objects; the rest of the code takes explicit arguments.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.settings_sections import (
    AnomalySettings,
    ChunkingSettings,
    CompressionSettings,
    DrillSettings,
    EncryptionSettings,
    FleetSettings,
    HealthSettings,
    HttpSettings,
    JobsSettings,
    LogSettings,
    MigrateSettings,
    NotifySettings,
    RestoreSettings,
    RetentionSettings,
    S3Settings,
    ScheduleSettings,
    VerifySettings,
    WalSettings,
    _duration,
    _Section,
)
from contentflow_backupd.statedir import default_state_dir

ENV_PREFIX = "BACKUPD_"


CLUSTER_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
"""A named cluster (``[clusters.<name>]``): the lowercase subset of the repository's cluster
names (``repository/layout.py``), since ``BACKUPD_CLUSTERS__<NAME>__*`` keys are lowercased."""


class ClusterSettings(_Section):
    """One named cluster (``[clusters.<name>]``, ``BACKUPD_CLUSTERS__<NAME>__<SETTING>``): the
    settings that make sense per cluster, each unset by default, which inherits the top level's
    (``Settings.for_cluster``). A section inherits key by key; the encryption secret
    (``passphrase``, ``passphrase_file``, ``key_file``, ``kms_key_id``) is inherited whole."""

    database_url: SecretStr | None = None
    repository: str | None = None
    mode: Literal["logical", "physical"] | None = None
    pg_bin: Path | None = None
    upload_concurrency: int | None = Field(None, ge=1, le=64)
    s3: S3Settings | None = None
    encryption: EncryptionSettings | None = None
    compression: CompressionSettings | None = None
    chunking: ChunkingSettings | None = None
    wal: WalSettings | None = None
    schedule: ScheduleSettings | None = None
    retention: RetentionSettings | None = None
    verify: VerifySettings | None = None
    drill: DrillSettings | None = None
    health: HealthSettings | None = None
    anomaly: AnomalySettings | None = None
    notify: NotifySettings | None = None
    migrate: MigrateSettings | None = None
    jobs: JobsSettings | None = None

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str | None) -> str | None:
        return None if v is None else check_repository_url(v)


ENCRYPTION_SECRET = ("passphrase", "passphrase_file", "key_file", "kms_key_id")
"""The exclusive group of ``[encryption]``: a cluster that sets one of them replaces them all."""


class Settings(BaseSettings):
    """Every setting of contentflow-backupd. See README "Settings"."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
    )

    config: Path | None = None
    database_url: SecretStr | None = None
    repository: str | None = None
    s3: S3Settings = S3Settings()
    encryption: EncryptionSettings = EncryptionSettings()
    catalog_url: SecretStr | None = None
    state_dir: Path = Field(default_factory=default_state_dir)
    cluster: str = "main"
    mode: Literal["logical", "physical"] = "logical"
    pg_bin: Path | None = None
    compression: CompressionSettings = CompressionSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    upload_concurrency: int = Field(8, ge=1, le=64)
    max_concurrent_jobs: int = Field(4, ge=2, le=256)
    """Scheduler workers shared by every job (``scheduling/pool.py``); a quarter of them, at
    least one, is kept for WAL jobs."""
    wal: WalSettings = WalSettings()
    restore: RestoreSettings = RestoreSettings()
    log: LogSettings = LogSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    retention: RetentionSettings = RetentionSettings()
    notify: NotifySettings = NotifySettings()
    http: HttpSettings = HttpSettings()
    anomaly: AnomalySettings = AnomalySettings()
    health: HealthSettings = HealthSettings()
    verify: VerifySettings = VerifySettings()
    drill: DrillSettings = DrillSettings()
    migrate: MigrateSettings = MigrateSettings()
    jobs: JobsSettings = JobsSettings()
    clusters: dict[str, ClusterSettings] = {}
    """Named clusters; empty: one implicit cluster named by ``cluster``."""
    fleet: FleetSettings = FleetSettings()
    shutdown_grace: str = "60s"
    """How long a running job may finish after the first SIGTERM before its children are stopped."""

    progress_interval: str = "10s"
    """How often a ``progress`` log event reports a running operation when no live progress line
    is drawn (off a terminal, ``--no-progress``, ``--json``, the daemon)."""

    _check_grace = field_validator("shutdown_grace", "progress_interval")(_duration)

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str | None) -> str | None:
        return None if v is None else check_repository_url(v)

    @field_validator("clusters")
    @classmethod
    def _cluster_names(cls, v: dict[str, ClusterSettings]) -> dict[str, ClusterSettings]:
        import re

        for name in v:
            if not re.match(CLUSTER_NAME, name) or "__" in name:
                raise ValueError(
                    f"{name!r} is not a valid cluster name (1-64 characters: lower-case letters, "
                    "digits, '_', '.', '-', starting with a letter or digit, no '__')"
                )
        return v

    @property
    def fleet_member(self) -> str:
        """``fleet.member``, or by default the host name and a hash of the state directory."""
        from contentflow_backupd.statedir import default_member

        return self.fleet.member or default_member(self.state_dir)

    @property
    def cluster_names(self) -> list[str]:
        """The configured clusters, sorted; the implicit one (``cluster``) when none is named."""
        return sorted(self.clusters) if self.clusters else [self.cluster]

    def for_cluster(self, name: str) -> Settings:
        """The settings of one cluster, as every builder in ``wiring`` takes them: the top level
        overlaid with the cluster's own keys, section by section (``settings_clusters.py``). The
        implicit configuration (no ``clusters``) is returned unchanged for its one cluster."""
        from contentflow_backupd.settings_clusters import cluster_view

        return cluster_view(self, name)

    _toml: dict[str, Any] = {}
    _credentials: dict[str, str] = {}
    _named: bool = False

    @property
    def named_cluster(self) -> bool:
        """These are the settings of one of several named clusters (``for_cluster``): another
        process given the same configuration must be told which one (``--cluster``)."""
        return self._named

    @property
    def credential_sources(self) -> dict[str, str]:
        """Settings read from a credential file: env name -> that file's path (``config show``)."""
        return dict(self._credentials)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # env, then init kwargs (tests build Settings(...) directly), then what load_settings
        # adds for this call: the TOML file, then the credential files.
        return (env_settings, init_settings, *_FILE_SOURCES.get())

    @property
    def catalog_sqlalchemy_url(self) -> str:
        if self.catalog_url is not None:
            return self.catalog_url.get_secret_value()
        return f"sqlite:///{self.state_dir / 'catalog.sqlite'}"


def check_repository_url(url: str) -> str:
    """``url`` when it names a repository this tool can open: ``file:///absolute/path`` (no host)
    or ``s3://bucket[/prefix]``. Checked here, once, so that every command (also those that never
    open the repository, such as ``runs``) stops on a bad value with exit 2."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    use = "use file:///absolute/path (three slashes) or s3://bucket/prefix"
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{url!r}: a file URL takes no host (here {parts.netloc!r}); {use}")
        if not parts.path or not Path(unquote(parts.path)).is_absolute():
            raise ValueError(f"{url!r} is not an absolute path; {use}")
    elif parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"{url!r} names no bucket; {use}")
    else:
        raise ValueError(f"unknown URL scheme {parts.scheme or '(none)'!r} in {url!r}; {use}")
    return url


def env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc if isinstance(p, str))


_FILE_SOURCES: ContextVar[tuple[PydanticBaseSettingsSource, ...]] = ContextVar(
    "settings_file_sources", default=()
)
"""The TOML file and credential sources of the ``load_settings`` call in progress."""


class TomlFile(TomlConfigSettingsSource):
    """The ``--config`` / ``BACKUPD_CONFIG`` file: pydantic-settings' TOML source, except that a
    file that was named must exist and be valid TOML (its source silently skips a missing file
    and raises the parser's bare error): each is a ``ConfigError`` naming the file."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            try:
                path.open("rb").close()
            except FileNotFoundError:
                raise ConfigError(f"config file {path} not found (--config / BACKUPD_CONFIG)") from None
            except OSError as exc:
                raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        super().__init__(Settings, toml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file_path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file_path}: {exc.strerror}") from None


# -- secrets from credential directories ------------------------------------------------------
SECRETS_DIR = Path("/run/secrets")
"""Docker and Kubernetes secrets; searched after ``$CREDENTIALS_DIRECTORY`` (systemd)."""

CREDENTIAL_SETTINGS: tuple[tuple[str, ...], ...] = (
    ("database_url",),
    ("catalog_url",),
    ("encryption", "passphrase"),
    ("encryption", "key_file"),
    ("notify", "webhook_url"),
    ("drill", "database_url"),
)
"""Settings a credential file can provide. The file is named after the setting's environment
variable (``BACKUPD_ENCRYPTION__PASSPHRASE``) and holds its value, trailing newlines stripped;
for ``key_file`` the credential is the key file itself and the setting becomes its path."""

_EXCLUSIVE: dict[tuple[str, ...], tuple[str, ...]] = {
    ("encryption",): ("passphrase", "passphrase_file", "key_file")
}
"""Settings of which only one may be given: one set by env or file hides every credential of
the group (of the top level, or of one cluster: ``clusters.<name>.encryption``)."""


TOP_LEVEL_ONLY = frozenset({("catalog_url",)})
"""Credential settings that no cluster has (one catalog per daemon)."""


def cluster_names_given(environ: Mapping[str, str], file_data: dict[str, Any]) -> list[str]:
    """The cluster names the environment (``BACKUPD_CLUSTERS__<NAME>__...``, lowercased as the
    settings lowercase them) and the TOML file (``[clusters.<name>]``) give."""
    names = set()
    prefix = ENV_PREFIX + "CLUSTERS__"
    for key in environ:
        upper = key.upper()
        if upper.startswith(prefix) and "__" in upper[len(prefix) :]:
            names.add(upper[len(prefix) :].split("__", 1)[0].lower())
    clusters = file_data.get("clusters")
    if isinstance(clusters, dict):
        names.update(str(name) for name in clusters)
    return sorted(n for n in names if n)


def credential_dirs() -> list[Path]:
    """Where credential files are looked for, first match wins: ``$CREDENTIALS_DIRECTORY``
    (systemd ``LoadCredential=``), then ``/run/secrets``."""
    dirs = [Path(os.environ["CREDENTIALS_DIRECTORY"])] if os.environ.get("CREDENTIALS_DIRECTORY") else []
    return [*dirs, SECRETS_DIR]


def _is_set(loc: tuple[str, ...], file_data: dict[str, Any], env_upper: set[str]) -> bool:
    if env_name(loc) in env_upper:
        return True
    part: Any = file_data
    for name in loc:
        if not isinstance(part, dict) or name not in part:
            return False
        part = part[name]
    return True


def read_credentials(
    file_data: dict[str, Any], dirs: list[Path] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Secret settings (``CREDENTIAL_SETTINGS``) from credential files, for those that neither
    the environment nor the TOML file sets (precedence: env > file > ``$CREDENTIALS_DIRECTORY``
    > ``/run/secrets``). Returns nested values to merge under the file's, and env name -> path
    of every credential used. An unreadable or empty credential raises ``ConfigError``."""
    env_upper = {k.upper() for k in os.environ}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    locs = list(CREDENTIAL_SETTINGS)
    for name in cluster_names_given(os.environ, file_data):
        locs += [("clusters", name, *loc) for loc in CREDENTIAL_SETTINGS if loc not in TOP_LEVEL_ONLY]
    for loc in locs:
        group = _EXCLUSIVE.get(loc[-2:-1], (loc[-1],))
        if any(_is_set((*loc[:-1], member), file_data, env_upper) for member in group):
            continue
        for directory in credential_dirs() if dirs is None else dirs:
            found = [directory / env_name((*loc[:-1], m)) for m in group if m != "passphrase_file"]
            found = [p for p in found if _is_file(p)]
            if len(found) > 1:
                raise ConfigError(
                    f"credential files {' and '.join(str(p) for p in found)} both set the encryption "
                    "secret; keep one"
                )
            path = directory / env_name(loc)
            if found and found[0] == path:
                value = _read_credential(path) if loc[-1] != "key_file" else str(path)
                section = values
                for name in loc[:-1]:
                    section = section.setdefault(name, {})
                section[loc[-1]] = value
                sources[env_name(loc)] = str(path)
            if found:
                break
    return values, sources


class CredentialFiles(PydanticBaseSettingsSource):
    """Secret settings from credential files (:func:`read_credentials`), the lowest source before
    the defaults. Not pydantic-settings' ``SecretsSettingsSource``, which would change what users
    rely on: a ``key_file`` credential is the key file itself (the setting becomes its path, not
    its contents); an empty file is an error, not an empty secret; only trailing newlines are
    stripped; a passphrase and a key file together are refused; nested settings are found by
    their ``BACKUPD_SECTION__NAME`` file name; a secrets directory that does not exist or that we
    may not search (``/run/secrets`` of another user) is skipped without a warning; and
    ``config show`` names the file each secret came from."""

    def __init__(self, file_data: dict[str, Any], dirs: list[Path] | None) -> None:
        super().__init__(Settings)
        self.values, self.sources = read_credentials(file_data, dirs)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.values


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a directory we may not search (/run/secrets of another user)
        return False


def _read_credential(path: Path) -> str:
    try:
        value = path.read_text("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read credential file {path}: {reason}") from None
    if not value:
        raise ConfigError(f"credential file {path} is empty", hint="write the secret into it, or remove it")
    return value


NOT_SETTINGS = frozenset(
    {"BACKUPD_DEMO_DIR", "BACKUPD_DEMO_SIZE_MB", "BACKUPD_TEST_PG_BIN", "BACKUPD_CONTAINER_TESTS"}
)
"""``BACKUPD_*`` variables that are not settings: read by ``make run``/``make demo`` and the tests."""


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section class of a field typed ``Section`` or ``Section | None``; None for a leaf."""
    import typing

    for ann in (annotation, *typing.get_args(annotation)):
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return ann
    return None


def setting_paths(model: type[BaseModel] | None = None) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    """Every setting of ``model`` (default: ``Settings``) as a path of field names: (sections such
    as ``("s3",)``, leaves such as ``("s3", "bucket")``). The one list the unknown-name check
    compares against; ``clusters`` is a leaf here (its names are free, their keys are those of
    ``ClusterSettings``: see ``unknown_names``)."""
    sections: set[tuple[str, ...]] = set()
    leaves: set[tuple[str, ...]] = set()

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, field in model.model_fields.items():
            path = (*prefix, name)
            section = _section_type(field.annotation)
            if section is not None:
                sections.add(path)
                walk(section, path)
            else:
                leaves.add(path)

    walk(Settings if model is None else model, ())
    return sections, leaves


def _did_you_mean(name: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_names(environ: dict[str, str] | os._Environ[str], file_data: dict[str, Any]) -> list[str]:
    """One problem line per unknown ``BACKUPD_*`` variable or config-file key, each suggesting
    the closest known name. The rule is the same wherever a name appears: unknown is an error
    (a misspelt secret or retention setting must not fall back to its default unnoticed). Under
    ``clusters.<name>`` (``BACKUPD_CLUSTERS__<NAME>__...``) the known names are those of
    ``ClusterSettings``."""
    sections, leaves = setting_paths()
    c_sections, c_leaves = setting_paths(ClusterSettings)
    problems = []
    env_names = {env_name(p) for p in leaves}

    def known(path: tuple[str, ...]) -> bool:
        if len(path) >= 2 and path[0] == "clusters":  # a cluster (JSON), or one of its settings
            rest = path[2:]
            return not rest or rest in c_leaves or rest in c_sections
        return path in leaves or path in sections

    def env_suggestion(path: tuple[str, ...]) -> set[str]:
        if len(path) >= 3 and path[0] == "clusters":
            return {env_name((*path[:2], *p)) for p in c_leaves}
        return env_names

    for raw in sorted(environ):
        name = raw.upper()
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        path = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
        if not known(path):
            problems.append(f"{raw}: unknown setting{_did_you_mean(name, env_suggestion(path))}")
    file_names = {".".join(p) for p in leaves}

    def walk(data: dict[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in data.items():
            path = (*prefix, str(key))
            in_cluster = len(path) >= 2 and path[0] == "clusters"
            if path == ("clusters",) and isinstance(value, dict):
                for cluster, keys in value.items():
                    if isinstance(keys, dict):
                        walk(keys, ("clusters", str(cluster)))
                continue
            if isinstance(value, dict) and (path in sections or (in_cluster and path[2:] in c_sections)):
                walk(value, path)
            elif not known(path):
                dotted = ".".join(path)
                names = {".".join((*path[:2], *p)) for p in c_leaves} if in_cluster else file_names
                problems.append(f"config file key {dotted}: unknown setting{_did_you_mean(dotted, names)}")

    walk(file_data, ())
    return problems


def load_settings(
    config_path: Path | None = None, *, secret_dirs: list[Path] | None = None
) -> tuple[Settings, dict[str, Any]]:
    """Resolve settings: env over the TOML file (``--config`` or ``BACKUPD_CONFIG``) over
    credential files (``read_credentials``; ``secret_dirs`` replaces ``credential_dirs()``, for
    tests) over defaults.

    Returns the settings and the TOML data (for ``config show``). Invalid values raise
    ``ConfigError`` naming the setting.
    """
    path = config_path or (Path(os.environ["BACKUPD_CONFIG"]) if os.environ.get("BACKUPD_CONFIG") else None)
    toml = TomlFile(path)
    file_data = toml.toml_data
    unknown = unknown_names(os.environ, file_data)
    if unknown:
        raise ConfigError(
            "invalid settings:\n  " + "\n  ".join(unknown),
            hint='see README.md "Settings" or `contentflow-backupd config show` for the known names',
        )
    credentials = CredentialFiles(file_data, secret_dirs)
    token = _FILE_SOURCES.set((toml, credentials))
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = env_name(err["loc"]) if err["loc"] else "settings"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            problems.append(f"{name}: {msg}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
    finally:
        _FILE_SOURCES.reset(token)
    if path is not None:
        settings.config = path
    settings._credentials = credentials.sources
    if settings.clusters:
        from contentflow_backupd.settings_clusters import check_clusters

        check_clusters(settings)
    return settings, file_data


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
