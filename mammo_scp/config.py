"""One typed Settings object, built once at start-up and passed down.

Sources, later ones winning: built-in defaults, the TOML file given with
``--config`` (else ``MAMMO_SCP_CONFIG``, else ``/etc/mammo-scp/node.toml`` when it
exists), then environment variables named ``MAMMO_SCP_<KEY>`` (upper case; lists such
as ``destinations`` as JSON). A bad value or an unknown key stops start-up with
:class:`ConfigError` naming the key, where it came from (file and line, or environment
variable), the value given and what is expected.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
#: An installed node's configuration, read when neither --config nor MAMMO_SCP_CONFIG names one
#: (the path the systemd unit uses).
SYSTEM_CONFIG = Path("/etc/mammo-scp/node.toml")
#: Keys that hold a list of tables (TOML ``[[key]]``; a JSON list in the environment).
LIST_KEYS = ("destinations", "allowed_callers")
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
    gsps: bool = False  # also send a Grayscale Softcopy Presentation State per image

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
    gsps: bool = False

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
    gsps: bool = False

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
    # the operating point: None takes the shipped detector's (its manifest's finding_score)
    finding_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # which U-Net regions become the SEG: "model" as the shipped U-Net's manifest says;
    # "with_finding" only regions touching a reported finding (the U-Net then runs only
    # around findings: a view without one costs the detector alone); "near_candidates"
    # the largest region of the U-Net run only around findings and the detector's top
    # candidates (the U-Net manifest's mask_candidates)
    mask_mode: Literal["model", "largest", "with_finding", "near_candidates"] = "model"
    # on oblique views (View Position MLO, ML, LM, LMO), report nothing centred in the
    # pectoral muscle, neither a finding nor a SEG region; None: as the shipped detector's
    # manifest says (exclude_pectoral)
    exclude_pectoral: bool | None = None
    cad_sr: bool = False
    #: below it a breast's or exam's score is "low"; None: the detector manifest's
    #: assessment_low (mammo_scp.assessment.detector_thresholds)
    assessment_low: float | None = Field(default=None, ge=0, le=1)

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

    def destinations_for(self, kind: str) -> tuple[str, ...]:
        """The destinations a result object of ``kind`` ('SEG', 'SR', 'GSPS', ...) goes to:
        a GSPS only to those with ``gsps = true``, every other object to all."""
        return tuple(d.name for d in self.destinations if kind != "GSPS" or d.gsps)

    @property
    def gsps(self) -> bool:
        """Whether any destination wants GSPS (else none is made)."""
        return any(d.gsps for d in self.destinations)

    @property
    def db_url(self) -> str:
        """The database URL, defaulting to an SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mammo-scp.db').resolve()}"


@dataclass(frozen=True)
class ConfigFile:
    """Which configuration file is used, and why (for messages that say where they looked)."""

    path: Path | None
    #: "--config", "MAMMO_SCP_CONFIG", "system default" or "none"
    chosen_by: str

    def describe(self) -> str:
        if self.path is None:
            return (f"no configuration file (no --config, {CONFIG_PATH_ENV} not set, "
                    f"{SYSTEM_CONFIG} absent): built-in defaults")
        return f"{self.path} ({self.chosen_by})"


def locate_config(path: Path | None = None, environ: Mapping[str, str] | None = None,
                  system_config: Path | None = None) -> ConfigFile:
    """The configuration file: ``path`` (--config), else $MAMMO_SCP_CONFIG, else the system
    default when it exists, else none (built-in defaults and the environment)."""
    environ = os.environ if environ is None else environ
    system_config = SYSTEM_CONFIG if system_config is None else system_config
    if path is not None:
        return ConfigFile(path, "--config")
    if environ.get(CONFIG_PATH_ENV):
        return ConfigFile(Path(environ[CONFIG_PATH_ENV]), CONFIG_PATH_ENV)
    if system_config.is_file():
        return ConfigFile(system_config, "system default")
    return ConfigFile(None, "none")


def _from_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The values set by MAMMO_SCP_<KEY> variables, and each key's variable name.

    Unknown keys are kept: validation reports them like an unknown key in the file."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_ENV:
            continue
        key = name[len(ENV_PREFIX):].lower()
        origins[key] = f"environment variable {name}"
        if key in LIST_KEYS:
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"key {key!r} (environment variable {name}) is {raw!r}: "
                                  f"expected a JSON list of objects, but it is not valid JSON "
                                  f"({exc})") from exc
        else:
            values[key] = raw
    return values, origins


_TABLE_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"-]+)\s*\]\]?")


def _toml_line(lines: Sequence[str], loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the TOML file where the value at ``loc`` is set, if it can be
    found by reading the lines (top-level keys and keys of ``[[list]]`` tables)."""
    if not loc or not isinstance(loc[0], str):
        return None
    key = str(loc[0])
    index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    field = loc[2] if index is not None and len(loc) > 2 and isinstance(loc[2], str) else None
    assignment = re.compile(rf"^\s*{re.escape(key)}\s*=")
    table: str | None = None
    seen = -1
    for number, line in enumerate(lines, start=1):
        header = _TABLE_HEADER.match(line)
        if header and "=" not in line.split("]")[0]:
            table = header.group(1)
            if table == key:
                seen += 1
                if index is None or (seen == index and field is None):
                    return number
            continue
        if table is None and assignment.match(line):
            return number
        if (table == key and seen == index and field is not None
                and re.match(rf"^\s*{re.escape(field)}\s*=", line)):
            return number
    return None


def _shown(key: str, value: Any) -> str:
    """A value as given, for an error message; passwords masked."""
    if "password" in key:
        return "'***'"
    text = repr(value)
    text = re.sub(r"(://[^:/@]+:)[^@/]+@", r"\1***@", text)
    return text if len(text) <= 120 else text[:117] + "..."


def _expected(message: str) -> str:
    """pydantic's message as what is expected ("expected a valid integer")."""
    message = message.removeprefix("Value error, ")
    for prefix in ("Input should be ", "Input should "):
        if message.startswith(prefix):
            return "expected " + message[len(prefix):]
    return message


def _problems(exc: ValidationError, origin_of: Any) -> list[str]:
    problems = []
    kinds = {"dicom", "dicomweb", "caller"}  # the union's tags are not part of the key
    for err in exc.errors():
        loc = [p for i, p in enumerate(err["loc"])
               if not (p in kinds and i > 0 and isinstance(err["loc"][i - 1], int))]
        key = ".".join(str(p) for p in loc)
        if not key:
            problems.append(err["msg"].removeprefix("Value error, "))
            continue
        where = origin_of(loc)
        if err["type"] == "extra_forbidden":
            known = (Settings.model_fields if len(loc) == 1 else {})
            close = difflib.get_close_matches(str(loc[-1]), list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"unknown key {key!r} ({where}){hint}")
        elif err["type"] == "missing":
            problems.append(f"key {key!r} ({where}) is missing: it is required")
        else:
            problems.append(f"key {key!r} ({where}) is {_shown(key, err['input'])}: "
                            f"{_expected(err['msg'])}")
    return problems


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None,
                  system_config: Path | None = None) -> Settings:
    """Build the effective settings from defaults, a TOML file and the environment.

    The file is ``path``, else $MAMMO_SCP_CONFIG, else :data:`SYSTEM_CONFIG` if it exists
    (:func:`locate_config`)."""
    environ = os.environ if environ is None else environ
    path = locate_config(path, environ, system_config).path
    values: dict[str, Any] = {}
    lines: list[str] = []
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        lines = text.splitlines()
    env_values, env_origins = _from_env(environ)
    values.update(env_values)

    def origin_of(loc: Sequence[str | int]) -> str:
        if str(loc[0]) in env_origins:
            return env_origins[str(loc[0])]
        line = _toml_line(lines, loc)
        return f"{path} line {line}" if line else f"{path}"

    problems = []
    for key in LIST_KEYS:
        if key in values and not isinstance(values[key], list):
            where = origin_of([key])
            form = ("a JSON list of objects, e.g. '[{...}, {...}]'" if key in env_origins
                    else f"a list of tables: [[{key}]] for each, not [{key}]")
            given = values.pop(key)
            if key in env_origins:  # as written, JSON
                given = environ[env_origins[key].removeprefix("environment variable ")]
            problems.append(f"key {key!r} ({where}) is {_shown(key, given)}: expected {form}")
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        problems.extend(_problems(exc, origin_of))
    if problems:
        raise ConfigError("bad configuration: " + "; ".join(problems))
    return settings


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
