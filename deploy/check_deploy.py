#!/usr/bin/env python3
"""Check that the deployment files and admin documents agree with the code.

Run from anywhere:  python deploy/check_deploy.py      (exit 0: all good, 1: a mismatch)

No container engine, cluster or systemd is needed; this checks what can be checked offline:

* every YAML file in deploy/ parses (yaml.safe_load_all), every JSON file parses (json.load);
* every `mammo-scp ...` command line in deploy/ (Dockerfile CMD, compose `command`, Kubernetes
  `args`, systemd `ExecStart`) parses with the real CLI parser, and every `mammo-scp <command>`
  quoted in code in deploy/*.md and docs/*.md names a real (sub)command;
* every `MAMMO_SCP_<KEY>` named anywhere in deploy/ and docs/ is a real setting
  (Settings.model_fields) or MAMMO_SCP_CONFIG, and the values given to the node (compose
  environment, Kubernetes env + ConfigMap node.toml, systemd environment file including each
  commented example) are accepted by mammo_scp.config.load_settings;
* ports: DICOM and HTTP ports in the Dockerfile, compose, Kubernetes and Orthanc files match
  the node's settings; probes and health checks use HTTP paths the code serves;
* Orthanc: the modality the Lua script sends to exists, points at the node's AE title, host
  and port; the Lua script's SOP classes are the ones the node accepts; the node's
  destination is Orthanc's AE title and port; the Lua file is mounted where orthanc.json
  loads it from;
* Kubernetes: pods that share a namespace with a Service whose injected variables would start
  with MAMMO_SCP_ set enableServiceLinks: false (the node refuses unknown MAMMO_SCP_* names,
  and this script checks that it still does);
* the Lua script compiles (`luac -p`), when a luac is installed;
* the compose file validates against the compose-spec schema, when check-jsonschema (which
  vendors it) is installed;
* the Kubernetes manifests validate (strict) against the API schemas of Kubernetes
  K8S_VERSION, when the kubernetes-validate package is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402  (pip install pyyaml)

from mammo_scp.cli import build_parser  # noqa: E402
from mammo_scp.config import CONFIG_PATH_ENV, ConfigError, Settings, load_settings  # noqa: E402
from mammo_scp.dicom import STORAGE_SOP_CLASSES  # noqa: E402

ENV_NAME = re.compile(r"\bMAMMO_SCP_[A-Z][A-Z0-9_]*[A-Z0-9]")  # a setting starts with a letter
#: Names that appear in the files on purpose although they are not settings: the variables
#: Kubernetes would inject for the Services (documented as the reason for enableServiceLinks).
NOT_SETTINGS_ON_PURPOSE = {"MAMMO_SCP_SERVICE_HOST", "MAMMO_SCP_SERVICE_PORT"}
HTTP_PATHS = ("/healthz", "/readyz", "/metrics")
#: Kubernetes version the manifests are validated against (when kubernetes-validate is there).
K8S_VERSION = "1.30.0"

problems: list[str] = []
checked: list[str] = []


def problem(where: str, what: str) -> None:
    problems.append(f"{where}: {what}")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------- the code's facts

DEFAULTS = Settings()
SETTING_KEYS = set(Settings.model_fields)
ALLOWED_ENV = {f"MAMMO_SCP_{k.upper()}" for k in SETTING_KEYS} | {CONFIG_PATH_ENV}


def command_tree() -> dict[str, set[str]]:
    """Top-level command -> its subcommands (empty set for a leaf such as `serve`)."""
    tree: dict[str, set[str]] = {}
    parser = build_parser()
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                children: set[str] = set()
                for sub_action in sub._actions:  # noqa: SLF001
                    if isinstance(sub_action, argparse._SubParsersAction):  # noqa: SLF001
                        children |= set(sub_action.choices)
                tree[name] = children
    return tree


COMMANDS = command_tree()
HTTP_SOURCE = (ROOT / "mammo_scp" / "http.py").read_text() if (
    ROOT / "mammo_scp" / "http.py").is_file() else ""


def check_cli_argv(where: str, argv: list[str]) -> None:
    """argv after the program name must parse with the real parser."""
    checked.append(f"command {where}: mammo-scp {' '.join(argv)}")
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit:
        problem(where, f"`mammo-scp {' '.join(argv)}` is not a valid command line")


def check_mammo_command(where: str, command: list[str]) -> None:
    """A container/unit command line: find the mammo-scp program and check its arguments."""
    for index, word in enumerate(command):
        if Path(word).name == "mammo-scp":
            check_cli_argv(where, command[index + 1:])
            return
    problem(where, f"command {command} does not run mammo-scp")


def check_settings(where: str, environ: dict[str, str],
                   config: Path | None = None) -> Settings | None:
    """The node must accept this environment (and config file) as it would at start-up;
    None (and a problem) when it does not."""
    checked.append(f"settings {where}: {sorted(environ)}")
    try:
        return load_settings(config, environ=environ)
    except ConfigError as exc:
        problem(where, f"the node refuses this configuration: {exc}")
        return None


def env_names_in(path: Path) -> None:
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        for name in ENV_NAME.findall(line):
            if name in ALLOWED_ENV or name in NOT_SETTINGS_ON_PURPOSE:
                continue
            if name.startswith("MAMMO_SCP_HTTP_") and name.endswith(("_SERVICE_HOST",
                                                                     "_SERVICE_PORT")):
                continue
            problem(f"{rel(path)}:{number}", f"{name} is not a setting of the node "
                    f"(settings: {', '.join(sorted(SETTING_KEYS))})")


# --------------------------------------------------------------------------------- parsing

def load_yaml(path: Path) -> list[Any]:
    try:
        with open(path) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    except yaml.YAMLError as exc:
        problem(rel(path), f"not valid YAML: {exc}")
        return []
    checked.append(f"yaml {rel(path)}: {len(docs)} document(s)")
    return docs


def load_json(path: Path) -> Any:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        problem(rel(path), f"not valid JSON: {exc}")
        return None
    checked.append(f"json {rel(path)}")
    return data


def http_port_of_url(where: str, text: str, expected_port: int) -> None:
    for port, route in re.findall(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[a-z]*)", text):
        if int(port) != expected_port:
            problem(where, f"health check uses HTTP port {port}, the node serves {expected_port}")
        check_http_path(where, route)


def check_http_path(where: str, route: str) -> None:
    if route not in HTTP_PATHS:
        problem(where, f"HTTP path {route} is not one the node serves {HTTP_PATHS}")
    elif HTTP_SOURCE and f'"{route}"' not in HTTP_SOURCE:
        problem(where, f"HTTP path {route} not found in mammo_scp/http.py")


# ------------------------------------------------------------------------------ Dockerfile

def check_dockerfile() -> None:
    path = DEPLOY / "Dockerfile"
    text = path.read_text()
    joined = re.sub(r"\\\n", " ", text)
    runtime = joined.split("FROM ")[-1]  # the last stage is the image
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", runtime, re.M)
    if not cmd:
        problem(rel(path), "no exec-form CMD in the runtime stage")
    else:
        argv = json.loads(cmd.group(1))
        if argv != ["mammo-scp", "serve"]:
            problem(rel(path), f"CMD is {argv}, expected ['mammo-scp', 'serve']")
        check_mammo_command(f"{rel(path)} CMD", argv)
    user = re.search(r"^USER\s+(\S+)", runtime, re.M)
    if not user or user.group(1).split(":")[0] in ("root", "0"):
        problem(rel(path), "the image must run as a non-root USER")
    expose = re.search(r"^EXPOSE\s+(.+)$", runtime, re.M)
    ports = {int(p.split("/")[0]) for p in expose.group(1).split()} if expose else set()
    if ports != {DEFAULTS.port, DEFAULTS.http_port}:
        problem(rel(path), f"EXPOSE {sorted(ports)}, node defaults are DICOM {DEFAULTS.port} "
                f"and HTTP {DEFAULTS.http_port}")
    health = re.search(r"^HEALTHCHECK.*$", runtime, re.M)
    if not health or "/healthz" not in health.group(0):
        problem(rel(path), "HEALTHCHECK must call /healthz")
    else:
        check_http_path(f"{rel(path)} HEALTHCHECK", "/healthz")
        if f"'{DEFAULTS.http_port}'" not in health.group(0):
            problem(rel(path), f"HEALTHCHECK default port is not {DEFAULTS.http_port}")
    for line in re.findall(r"^ENV\s+(.+)$", runtime, re.M):
        env = dict(re.findall(r"(\w+)=(\S+)", line))
        node_env = {k: v for k, v in env.items() if k.startswith("MAMMO_SCP_")}
        # Paths in the image do not exist here: check names and types only.
        if node_env:
            try:
                Settings.model_validate({k[len("MAMMO_SCP_"):].lower(): v
                                         for k, v in node_env.items()})
            except Exception as exc:  # noqa: BLE001
                problem(rel(path), f"ENV values refused: {exc}")
    for needed in ("migrations/", "models/", "mammo_scp/"):
        if not re.search(rf"^COPY\s+{re.escape(needed)}", joined, re.M):
            problem(rel(path), f"the image must COPY {needed}")
    if "pip install -e ." not in joined:
        problem(rel(path), "install in place (pip install -e .): the code finds migrations/ "
                "and models/ beside the package")
    env_names_in(path)


# ---------------------------------------------------------------------------------- compose

def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def check_compose_schema(path: Path, compose: dict[str, Any]) -> None:
    """Optional: the compose-spec JSON schema vendored by check-jsonschema (offline)."""
    try:
        import importlib.resources

        import check_jsonschema
        import jsonschema
    except ImportError:
        checked.append("compose schema: check-jsonschema not installed, not checked")
        return
    schema_file = (importlib.resources.files(check_jsonschema) / "builtin_schemas" / "vendor"
                   / "compose-spec.json")
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    for error in errors:
        location = "/".join(map(str, error.path)) or "(top level)"
        problem(rel(path), f"compose-spec schema: {location}: {error.message}")
    if not errors:
        checked.append(f"compose schema {rel(path)}: compose-spec (check-jsonschema vendored)")


def check_compose() -> None:
    path = DEPLOY / "docker-compose.yml"
    docs = load_yaml(path)
    if not docs:
        return
    compose = docs[0]
    check_compose_schema(path, compose)
    services = compose.get("services", {})
    for name in ("mammo-scp", "mammo-worker", "postgres", "orthanc"):
        if name not in services:
            problem(rel(path), f"service {name!r} missing")
        elif "healthcheck" not in services[name]:
            problem(rel(path), f"service {name!r} has no healthcheck")
    node_settings: dict[str, Settings] = {}
    for name in ("mammo-scp", "mammo-worker"):
        service = services.get(name)
        if not service:
            continue
        where = f"{rel(path)} service {name}"
        command = service.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        check_mammo_command(where, command or ["mammo-scp", "serve"])
        env = compose_env(service)
        settings = check_settings(where, env)
        if settings is None:
            continue
        node_settings[name] = settings
        if not settings.database_url or not settings.database_url.startswith("postgresql"):
            problem(where, "must use the shared PostgreSQL (MAMMO_SCP_DATABASE_URL)")
        test = " ".join(map(str, (service.get("healthcheck") or {}).get("test", [])))
        http_port_of_url(f"{where} healthcheck", test, settings.http_port)
        mounts = [str(v).split(":")[1] for v in service.get("volumes", [])]
        if str(settings.spool) not in mounts:
            problem(where, f"spool {settings.spool} is not on a shared volume ({mounts})")
        for port in service.get("ports", []):
            host, _, container = str(port).rpartition(":")
            if int(container) not in (settings.port, settings.http_port):
                problem(where, f"published port {port} is neither DICOM {settings.port} "
                        f"nor HTTP {settings.http_port}")
        if name == "mammo-worker" and service.get("ports"):
            problem(where, "a scalable worker must not publish host ports")
    scp, worker = node_settings.get("mammo-scp"), node_settings.get("mammo-worker")
    if scp and worker:
        if scp.db_url != worker.db_url or scp.spool != worker.spool:
            problem(rel(path), "mammo-scp and mammo-worker must share the database and spool")
        if scp.workers < 1:
            problem(rel(path), "keep workers >= 1 in serve")
    # Orthanc <-> node
    orthanc_cfg = load_json(DEPLOY / "orthanc" / "orthanc.json")
    orthanc = services.get("orthanc", {})
    if scp and orthanc_cfg is not None:
        check_orthanc(orthanc_cfg, scp, orthanc, "mammo-scp")
    for name, service in services.items():
        for variable in compose_env(service):
            if variable.startswith("MAMMO_SCP_") and variable not in ALLOWED_ENV:
                problem(f"{rel(path)} service {name}", f"{variable} is not a setting")
    env_names_in(path)


def lua_string(text: str, name: str) -> str | None:
    found = re.search(rf"local\s+{name}\s*=\s*'([^']*)'", text)
    return found.group(1) if found else None


def check_orthanc(cfg: dict[str, Any], node: Settings, service: dict[str, Any],
                  node_host: str) -> None:
    where = "deploy/orthanc/orthanc.json"
    lua_path = DEPLOY / "orthanc" / "route-mammo.lua"
    lua = lua_path.read_text()
    modality_key = lua_string(lua, "NODE_MODALITY")
    node_aet = lua_string(lua, "NODE_AET")
    modalities = cfg.get("DicomModalities", {})
    entry = modalities.get(modality_key or "")
    if entry is None:
        problem(where, f"DicomModalities has no {modality_key!r}, which route-mammo.lua sends to")
    else:
        if isinstance(entry, list):
            entry = {"AET": entry[0], "Host": entry[1], "Port": entry[2]}
        if entry.get("AET") != node.ae_title:
            problem(where, f"modality AET {entry.get('AET')} != node ae_title {node.ae_title}")
        if int(entry.get("Port", 0)) != node.port:
            problem(where, f"modality port {entry.get('Port')} != node port {node.port}")
        if entry.get("Host") != node_host:
            problem(where, f"modality host {entry.get('Host')} != compose service {node_host}")
    if node_aet != node.ae_title:
        problem(rel(lua_path), f"NODE_AET {node_aet} != node ae_title {node.ae_title}")
    lua_classes = set(re.findall(r"\['([0-9.]+)'\]\s*=\s*true", lua))
    if lua_classes != {c.value for c in STORAGE_SOP_CLASSES}:
        problem(rel(lua_path), f"SOP classes {sorted(lua_classes)} differ from the node's "
                f"{sorted(c.value for c in STORAGE_SOP_CLASSES)}")
    if not (cfg.get("DicomAlwaysAllowStore", True) or (entry or {}).get("AllowStore")):
        problem(where, "Orthanc would not accept the node's results")
    # The node's destination is this Orthanc.
    dicom_dests = [d for d in node.destinations if getattr(d, "kind", "") == "dicom"]
    if not any(d.host == "orthanc" and d.port == cfg.get("DicomPort", 4242)
               and d.ae_title == cfg.get("DicomAet", "ORTHANC") for d in dicom_dests):
        problem("deploy/docker-compose.yml", "no node destination is the Orthanc service "
                f"(AE {cfg.get('DicomAet')}, port {cfg.get('DicomPort')})")
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in service.get("volumes", [])}
    for script in cfg.get("LuaScripts", []):
        if script not in mounts or not mounts[script].endswith("route-mammo.lua"):
            problem(where, f"LuaScripts {script} is not where compose mounts route-mammo.lua")
    if "/etc/orthanc/orthanc.json" not in mounts:
        problem("deploy/docker-compose.yml", "orthanc.json is not mounted into /etc/orthanc")
    published = {str(p).rpartition(":")[2] for p in service.get("ports", [])}
    for port in (cfg.get("DicomPort"), cfg.get("HttpPort")):
        if str(port) not in published:
            problem("deploy/docker-compose.yml", f"Orthanc port {port} is not published")
    luac = shutil.which("luac") or shutil.which("luac5.4") or shutil.which("luac5.3")
    if luac:
        result = subprocess.run([luac, "-p", str(lua_path)], capture_output=True, text=True)
        if result.returncode != 0:
            problem(rel(lua_path), f"luac -p: {result.stderr.strip()}")
        else:
            checked.append(f"lua {rel(lua_path)}: {luac} -p ok")
    else:
        checked.append("lua: no luac installed, syntax not checked")


# ------------------------------------------------------------------------------- Kubernetes

def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield doc["spec"]["template"]["spec"]


def check_k8s() -> None:
    k8s = DEPLOY / "k8s"
    docs: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(k8s.glob("*.yaml")):
        for doc in load_yaml(path):
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                problem(rel(path), "a document without kind/apiVersion")
                continue
            if doc.get("metadata", {}).get("namespace"):
                problem(rel(path), "manifests must be namespace-agnostic")
            docs.append((path, doc))
        env_names_in(path)
    try:  # optional: pip install kubernetes-validate (bundled API schemas, offline)
        import kubernetes_validate
    except ImportError:
        checked.append("k8s schemas: kubernetes-validate not installed, not checked")
    else:
        for path, doc in docs:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problem(rel(path), f"{doc['kind']} does not validate against Kubernetes "
                        f"{K8S_VERSION}: {exc.message}")
            else:
                checked.append(f"k8s schema {rel(path)} {doc['kind']} (strict, {K8S_VERSION})")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for _, doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", [])}
    pvcs = {d["metadata"]["name"]: d for d in by_kind.get("PersistentVolumeClaim", [])}
    services = by_kind.get("Service", [])
    injected = [s["metadata"]["name"].upper().replace("-", "_") + "_SERVICE_HOST"
                for s in services]
    clashing = [n for n in injected if n.startswith("MAMMO_SCP_")]
    # The reason for enableServiceLinks: false must still hold.
    for name in clashing:
        try:
            load_settings(None, environ={name: "10.0.0.1"})
        except ConfigError:
            pass
        else:
            problem("deploy/k8s", f"the node now accepts {name}; enableServiceLinks: false "
                    "comments may be out of date")
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    for required in ("mammo-scp", "mammo-scp-worker"):
        if required not in deployments:
            problem("deploy/k8s", f"Deployment {required} missing")
    svc_ports = {p.get("targetPort") for s in services for p in s["spec"]["ports"]}
    settings_by_deployment: dict[str, Settings] = {}
    for name, doc in deployments.items():
        where = f"deploy/k8s Deployment {name}"
        spec = next(pod_specs(doc))
        if clashing and spec.get("enableServiceLinks") is not False:
            problem(where, f"set enableServiceLinks: false (Services inject {clashing})")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            argv = list(container.get("command", [])) + list(container.get("args", []))
            check_mammo_command(f"{where} container {container['name']}", argv)
            env: dict[str, str] = {}
            for item in container.get("env", []):
                if "value" in item:
                    env[item["name"]] = str(item["value"])
                elif "valueFrom" in item and "secretKeyRef" in item["valueFrom"]:
                    ref = item["valueFrom"]["secretKeyRef"]
                    secret = secrets.get(ref["name"])
                    if secret is None:
                        problem(where, f"Secret {ref['name']} not among the manifests")
                        continue
                    data = secret.get("stringData", {})
                    if ref["key"] not in data:
                        problem(where, f"Secret {ref['name']} has no key {ref['key']}")
                        continue
                    env[item["name"]] = str(data[ref["key"]])
            config_file: Path | None = None
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            config_path = env.pop(CONFIG_PATH_ENV, None)
            tmp = None
            if config_path:
                directory, _, filename = config_path.rpartition("/")
                mount = mounts.get(directory)
                volume = volumes.get(mount["name"]) if mount else None
                cm_name = (volume or {}).get("configMap", {}).get("name")
                if cm_name not in configmaps:
                    problem(where, f"{CONFIG_PATH_ENV}={config_path} is not a mounted ConfigMap")
                else:
                    text = configmaps[cm_name]["data"].get(filename)
                    if text is None:
                        problem(where, f"ConfigMap {cm_name} has no {filename}")
                    else:
                        with tempfile.NamedTemporaryFile("w", suffix=".toml",
                                                         delete=False) as tmp:
                            tmp.write(text)
                        config_file = Path(tmp.name)
            settings = check_settings(where, env, config_file)
            if tmp is not None:
                os.unlink(tmp.name)
            if settings is None:
                continue
            settings_by_deployment[name] = settings
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            if ports.get("http") != settings.http_port:
                problem(where, f"container port http {ports.get('http')} != http_port "
                        f"{settings.http_port}")
            if "dicom" in ports and ports["dicom"] != settings.port:
                problem(where, f"container port dicom {ports['dicom']} != port {settings.port}")
            for probe_name, route in (("readinessProbe", "/readyz"),
                                      ("livenessProbe", "/healthz")):
                probe = container.get(probe_name, {}).get("httpGet", {})
                if probe.get("path") != route:
                    problem(where, f"{probe_name} must GET {route}")
                check_http_path(f"{where} {probe_name}", probe.get("path", ""))
                if probe.get("port") not in ("http", settings.http_port):
                    problem(where, f"{probe_name} port {probe.get('port')} is not the HTTP port")
            spool_mounts = [m for m in container.get("volumeMounts", [])
                            if m["mountPath"] == str(settings.spool)]
            if not spool_mounts:
                problem(where, f"the spool {settings.spool} is not mounted")
            else:
                volume = volumes.get(spool_mounts[0]["name"], {})
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                if claim not in pvcs:
                    problem(where, f"the spool is not the shared PVC ({claim})")
                elif "ReadWriteMany" not in pvcs[claim]["spec"]["accessModes"]:
                    problem(where, f"PVC {claim} must be ReadWriteMany")
            if not settings.database_url or not settings.database_url.startswith("postgresql"):
                problem(where, "pods must share a PostgreSQL database (MAMMO_SCP_DATABASE_URL)")
    scp = deployments.get("mammo-scp")
    if scp:
        container = next(pod_specs(scp))["containers"][0]
        if "serve" not in container.get("args", []) + container.get("command", []):
            problem("deploy/k8s Deployment mammo-scp", "must run `mammo-scp serve`")
        for port_name in ("dicom", "http"):
            if port_name not in svc_ports:
                problem("deploy/k8s/scp-service.yaml", f"no Service targets port {port_name}")
        if settings_by_deployment.get("mammo-scp", DEFAULTS).workers < 1:
            problem("deploy/k8s", "keep workers >= 1 in the SCP pod")
    worker = deployments.get("mammo-scp-worker")
    if worker:
        container = next(pod_specs(worker))["containers"][0]
        if "work" not in container.get("args", []) + container.get("command", []):
            problem("deploy/k8s Deployment mammo-scp-worker", "must run `mammo-scp work`")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            problem("deploy/k8s HPA", f"scales unknown Deployment {target}")


# ---------------------------------------------------------------------------------- systemd

def unit_values(text: str, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", text, re.M)


def check_systemd() -> None:
    directory = DEPLOY / "systemd"
    env_path = directory / "mammo-scp.env"
    base_env: dict[str, str] = {}
    examples: list[tuple[int, str, str]] = []
    for number, line in enumerate(env_path.read_text().splitlines(), start=1):
        active = re.match(r"^(MAMMO_SCP_[A-Z_]+)=(.*)$", line)
        example = re.match(r"^#\s*(MAMMO_SCP_[A-Z_]+)=(.*)$", line)
        if active:
            base_env[active.group(1)] = active.group(2)
        elif example:
            examples.append((number, example.group(1), example.group(2)))
    env_names_in(env_path)
    check_settings(rel(env_path), base_env)
    for number, name, value in examples:
        if name == CONFIG_PATH_ENV or name.startswith("MAMMO_SCP_TLS_"):
            continue  # a file path on the target host (the node checks that it exists)
        check_settings(f"{rel(env_path)}:{number} (commented example)",
                       base_env | {name: value})
    for unit in sorted(directory.glob("*.service")):
        text = unit.read_text()
        env_names_in(unit)
        for key, expected in (("User", "mammo"), ("Restart", "on-failure"),
                              ("ProtectSystem", "strict"), ("NoNewPrivileges", "true"),
                              ("PrivateTmp", "true")):
            if expected not in unit_values(text, key):
                problem(rel(unit), f"{key}={expected} missing")
        if not any("/var/lib/mammo-scp" in v for v in unit_values(text, "ReadWritePaths")):
            problem(rel(unit), "ReadWritePaths= must include the data directory")
        if not any(v.endswith("mammo-scp.env") for v in unit_values(text, "EnvironmentFile")):
            problem(rel(unit), "EnvironmentFile=/etc/mammo-scp/mammo-scp.env missing")
        for exec_start in unit_values(text, "ExecStart"):
            argv = shlex.split(exec_start)
            env = {}
            while argv and (Path(argv[0]).name == "env" or "=" in argv[0]):
                word = argv.pop(0)
                if "=" in word:
                    key, _, value = word.partition("=")
                    env[key] = value
            for key, value in env.items():
                if key.startswith("MAMMO_SCP_") and key not in ALLOWED_ENV:
                    problem(rel(unit), f"ExecStart sets {key}, not a setting")
                if "%i" in value:
                    continue  # the instance name, e.g. mammo-scp-worker@8081: checked below
                check_settings(f"{rel(unit)} ExecStart", base_env | {key: value})
            check_mammo_command(f"{rel(unit)} ExecStart", argv)
        if "@" in unit.name and "MAMMO_SCP_HTTP_PORT=%i" in text:
            check_settings(f"{rel(unit)} as instance 8081",
                           base_env | {"MAMMO_SCP_HTTP_PORT": "8081"})


# --------------------------------------------------------------------------------- documents

CODE_SPAN = re.compile(r"```.*?```|`[^`\n]+`", re.S)
MAMMO_COMMAND = re.compile(r"mammo-scp[ \t]+([^\s`'\")]+)(?:[ \t]+([^\s`'\")]+))?")
WORD = re.compile(r"^[a-z][a-z-]*$")


def check_documents() -> None:
    files = sorted(DEPLOY.rglob("*.md")) + (sorted(DOCS.rglob("*.md")) if DOCS.is_dir() else [])
    for path in files:
        text = path.read_text()
        env_names_in(path)
        for span in CODE_SPAN.findall(text):
            if span.startswith("```"):
                # Whole command lines in code blocks: parse them completely.
                for line in span.splitlines():
                    line = line.split(" #", 1)[0].strip()
                    if line.startswith("mammo-scp ") and "..." not in line:
                        check_cli_argv(f"{rel(path)} code block", shlex.split(line)[1:])
            for line in span.splitlines():
                for start in [m.start() for m in re.finditer(r"mammo-scp", line)]:
                    found = MAMMO_COMMAND.match(line, start)
                    if not found or (start and not re.match(r"[\s/(`]", line[start - 1])):
                        continue
                    first, second = found.group(1), found.group(2) or ""
                    if first == "mammo-scp" or not WORD.match(first):
                        continue  # e.g. `compose exec mammo-scp mammo-scp ...`, `--config`
                    if not WORD.match(second):
                        second = ""
                    where = rel(path)
                    if first not in COMMANDS:
                        problem(where, f"`mammo-scp {first}` is not a command "
                                f"({', '.join(sorted(COMMANDS))})")
                        continue
                    children = COMMANDS[first]
                    if children and second and second not in children:
                        problem(where, f"`mammo-scp {first} {second}` is not a command "
                                f"({first}: {', '.join(sorted(children))})")
                    checked.append(f"doc command {where}: mammo-scp {first} {second}".rstrip())


def check_all_json_yaml() -> None:
    for path in sorted(DEPLOY.rglob("*.json")):
        load_json(path)
    seen = {DEPLOY / "docker-compose.yml"} | set((DEPLOY / "k8s").glob("*.yaml"))
    for path in sorted(list(DEPLOY.rglob("*.yml")) + list(DEPLOY.rglob("*.yaml"))):
        if path not in seen:
            load_yaml(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list what was checked")
    args = parser.parse_args()
    check_all_json_yaml()
    check_dockerfile()
    check_compose()
    check_k8s()
    check_systemd()
    check_documents()
    if args.verbose:
        for line in checked:
            print("checked", line)
    if problems:
        for line in problems:
            print("MISMATCH", line)
        print(f"{len(problems)} mismatch(es)")
        return 1
    print(f"deploy/ agrees with the code ({len(checked)} checks)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
