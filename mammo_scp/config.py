"""One typed Settings object, built once at start-up and passed down.

Sources, later ones winning: built-in defaults, the TOML file given with
``--config`` (or ``MAMMO_SCP_CONFIG``), then environment variables named
``MAMMO_SCP_<KEY>`` (upper case; lists such as ``destinations`` as JSON).
A bad value stops start-up with :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "MAMMO_SCP_"
#: The weights shipped with the node (top-level models/ of the repository).
SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"
CONFIG_PATH_ENV = "MAMMO_SCP_CONFIG"
# DICOM PS3.5 AE title: 1-16 characters of the default repertoire, no backslash or control chars.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(
            "must be 1-16 printable ASCII characters, not all spaces, without a backslash"
        )
    return value


AETitle = Annotated[str, AfterValidator(_check_ae_title)]


class Peer(BaseModel):
    """Where a DICOM AE listens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)


class DicomDestination(Peer):
    """A peer that receives the node's result objects by C-STORE."""

    kind: Literal["dicom"] = "dicom"
    name: str = Field(min_length=1, max_length=64)
    ae_title: AETitle
    storage_commitment: bool = False

    @property
    def target(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class DicomWebDestination(BaseModel):
    """A DICOMweb server that receives the result objects by STOW-RS (POST {url}/studies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["dicomweb"]
    name: str = Field(min_length=1, max_length=64)
    url: str = Field(pattern=r"^https?://")
    username: str | None = None
    password: str | None = None

    @property
    def target(self) -> str:
        return self.url


class CallerDestination(BaseModel):
    """Send the results back to the AE that sent the study, looked up by calling AE title.

    For PACS that expect results from the node they routed to; a study from an AE
    missing from ``peers`` gets a dead delivery naming it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["caller"]
    name: str = Field(min_length=1, max_length=64)
    peers: dict[AETitle, Peer] = Field(min_length=1)

    @property
    def target(self) -> str:
        return "the calling AE: " + ", ".join(sorted(self.peers))


class AllowedCaller(BaseModel):
    """A calling AE title allowed to associate, optionally only from one host address."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: AETitle
    host: str | None = None


Destination = Annotated[
    DicomDestination | DicomWebDestination | CallerDestination, Field(discriminator="kind")
]


class Settings(BaseModel):
    """Every setting of the node, with its default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: AETitle = "MAMMO_SCP"
    bind_address: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    data_dir: Path = Path("mammo-scp-data")
    spool_dir: Path | None = None
    database_url: str | None = None
    workers: int = Field(default=1, ge=0, le=64)
    worker_process: bool = True  # serve: run the workers in a child process, not beside the SCP
    worker_nice: int = Field(default=10, ge=0, le=19)
    quiet_period_s: float = Field(default=30.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    job_lease_s: float = Field(default=120.0, ge=5)
    max_job_attempts: int = Field(default=3, ge=1)
    destinations: tuple[Destination, ...] = ()
    delivery_max_attempts: int = Field(default=8, ge=1)
    delivery_backoff_s: float = Field(default=5.0, gt=0)
    delivery_backoff_max_s: float = Field(default=600.0, gt=0)
    delivery_timeout_s: float = Field(default=30.0, gt=0)
    min_free_mb: int = Field(default=1024, ge=0)
    min_image_side: int = Field(default=64, ge=1)
    max_image_pixels: int = Field(default=120_000_000, ge=1)
    max_pdu: int = Field(default=4 * 1024 * 1024, ge=0)
    max_associations: int = Field(default=16, ge=1)
    require_called_ae: bool = True
    allowed_callers: tuple[AllowedCaller, ...] = ()
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_client_ca: Path | None = None
    http_bind_address: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)  # 0: no HTTP side
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    models_dir: Path = SHIPPED_MODELS
    inference_precision: Literal["auto", "fp32", "bf16"] = "auto"
    cad_sr: bool = False

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @field_validator("destinations", mode="before")
    @classmethod
    def _dicom_by_default(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [({"kind": "dicom"} | item) if isinstance(item, dict) else item
                    for item in value]
        return value

    @model_validator(mode="after")
    def _tls_files(self) -> Settings:
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError("tls_certificate and tls_private_key must be given together")
        if self.tls_client_ca is not None and self.tls_certificate is None:
            raise ValueError("tls_client_ca needs tls_certificate and tls_private_key")
        for key in ("tls_certificate", "tls_private_key", "tls_client_ca"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{key}: file {path} does not exist")
        return self

    @model_validator(mode="after")
    def _unique_destination_names(self) -> Settings:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destinations: names must be unique, repeated: {duplicates}")
        return self

    @property
    def spool(self) -> Path:
        """Where received instances and result objects are kept."""
        return (self.spool_dir or self.data_dir / "spool").resolve()

    @property
    def destination_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.destinations)

    @property
    def db_url(self) -> str:
        """The database URL, defaulting to an SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mammo-scp.db').resolve()}"


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    known = Settings.model_fields
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_ENV:
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in known:
            raise ConfigError(f"environment variable {name}: unknown key {key!r}")
        if key in ("destinations", "allowed_callers"):
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment variable {name}: not valid JSON ({exc})") from exc
        else:
            values[key] = raw
    return values


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the effective settings from defaults, an optional TOML file and the environment."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_PATH_ENV):
        path = Path(environ[CONFIG_PATH_ENV])
    values: dict[str, Any] = {}
    source = "defaults and environment"
    if path is not None:
        source = f"{path} and environment"
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    values.update(_from_env(environ))
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        kinds = {"dicom", "dicomweb", "caller"}  # the union's tags are not part of the key
        for err in exc.errors():
            loc = [p for i, p in enumerate(err["loc"])
                   if not (p in kinds and i > 0 and isinstance(err["loc"][i - 1], int))]
            key = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(f"key '{key}': {err['msg']}")
        raise ConfigError(f"bad configuration ({source}): " + "; ".join(problems)) from exc


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    return json.dumps(value)


def render_settings(settings: Settings) -> str:
    """The effective configuration as TOML, for ``mammo-scp config show`` (passwords masked)."""
    lines = []
    data = settings.model_dump(mode="json")
    data["spool_dir"] = str(settings.spool)
    data["database_url"] = settings.db_url
    destinations = data.pop("destinations")
    callers = data.pop("allowed_callers")
    for key, value in data.items():
        if value is None:
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    for caller in callers:
        lines.append("")
        lines.append("[[allowed_callers]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in caller.items() if v is not None)
    for dest in destinations:
        lines.append("")
        lines.append("[[destinations]]")
        for key, value in dest.items():
            if value is None:
                continue
            lines.append(f"{key} = {_toml_value('***' if key == 'password' else value)}")
    return "\n".join(lines) + "\n"
