from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mammo_scp.config import ConfigError, load_settings, render_settings


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.ae_title == "MAMMO_SCP"
    assert settings.port == 11112
    assert settings.quiet_period_s == 30.0
    assert settings.db_url.startswith("sqlite:///") and settings.db_url.endswith("mammo-scp.db")
    assert settings.spool == (Path("mammo-scp-data") / "spool").resolve()


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('ae_title = "SITE_AI"\nport = 104\nworkers = 3\n'
                    '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\n'
                    'host = "10.0.0.5"\nport = 4242\n')
    settings = load_settings(path, environ={"MAMMO_SCP_PORT": "11113"})
    assert (settings.ae_title, settings.port, settings.workers) == ("SITE_AI", 11113, 3)
    assert settings.destinations[0].ae_title == "ORTHANC"
    assert 'port = 11113' in render_settings(settings)


def test_the_operating_point_is_the_models_unless_configured(tmp_path: Path) -> None:
    settings = load_settings(environ={})
    assert settings.finding_threshold is None and settings.mask_mode == "model"
    path = tmp_path / "node.toml"
    path.write_text('finding_threshold = 0.4\nmask_mode = "with_finding"\n')
    settings = load_settings(path, environ={})
    assert (settings.finding_threshold, settings.mask_mode) == (0.4, "with_finding")
    path.write_text('mask_mode = "near_candidates"\n')
    assert load_settings(path, environ={}).mask_mode == "near_candidates"
    path.write_text('mask_mode = "biggest"\n')
    with pytest.raises(ConfigError, match="mask_mode"):
        load_settings(path, environ={})
    assert settings.exclude_pectoral is None
    path.write_text('exclude_pectoral = false\n')
    assert load_settings(path, environ={}).exclude_pectoral is False
    assert load_settings(environ={"MAMMO_SCP_EXCLUDE_PECTORAL": "true"}).exclude_pectoral is True
    path.write_text('exclude_pectoral = "sometimes"\n')
    with pytest.raises(ConfigError, match="exclude_pectoral"):
        load_settings(path, environ={})


def test_destinations_from_environment_json() -> None:
    settings = load_settings(environ={"MAMMO_SCP_DESTINATIONS":
                                      '[{"name": "a", "ae_title": "A", "host": "h", "port": 1}]'})
    assert settings.destinations[0].name == "a"


@pytest.mark.parametrize("environ,named", [
    ({"MAMMO_SCP_PORT": "70000"}, "'port'"),
    ({"MAMMO_SCP_AE_TITLE": "THIS_TITLE_IS_TOO_LONG"}, "'ae_title'"),
    ({"MAMMO_SCP_WORKERS": "many"}, "'workers'"),
    ({"MAMMO_SCP_DATABASE_URL": "mysql://x"}, "'database_url'"),
    ({"MAMMO_SCP_PROT": "104"}, "MAMMO_SCP_PROT"),
    ({"MAMMO_SCP_DESTINATIONS": "[{"}, "MAMMO_SCP_DESTINATIONS"),
    ({"MAMMO_SCP_FINDING_THRESHOLD": "1.5"}, "'finding_threshold'"),
    ({"MAMMO_SCP_MASK_MODE": "biggest"}, "'mask_mode'"),
    ({"MAMMO_SCP_DESTINATIONS": '[{"name": "a", "ae_title": "A", "host": "h"}]'},
     "'destinations.0.port'"),
])
def test_bad_values_name_the_key(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(environ=environ)


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("quiet_period = 5\n")
    with pytest.raises(ConfigError, match="'quiet_period'"):
        load_settings(path, environ={})


def test_serve_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("port = 0\n")
    done = subprocess.run([sys.executable, "-m", "mammo_scp", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "key 'port'" in done.stderr


def test_errors_say_where_the_value_came_from_what_it_is_and_what_is_expected(
        tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('ae_title = "SITE"\nport = 0\n\n[[destinations]]\nname = "pacs"\n'
                    'ae_title = "ORTHANC"\nhost = "h"\nport = "abc"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={"MAMMO_SCP_WORKERS": "many"})
    message = str(raised.value)
    assert f"key 'port' ({path} line 2) is 0: expected greater than or equal to 1" in message
    assert f"key 'destinations.0.port' ({path} line 8) is 'abc': expected a valid integer" \
        in message
    assert "key 'workers' (environment variable MAMMO_SCP_WORKERS) is 'many': expected a " \
        "valid integer" in message


def test_unknown_keys_are_worded_alike_in_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('ae_title = "SITE"\nprot = 104\n')
    with pytest.raises(ConfigError) as from_file:
        load_settings(path, environ={})
    with pytest.raises(ConfigError) as from_env:
        load_settings(environ={"MAMMO_SCP_PROT": "104"})
    assert str(from_file.value) == (f"bad configuration: unknown key 'prot' ({path} line 2); "
                                    "did you mean 'port'?")
    assert str(from_env.value) == ("bad configuration: unknown key 'prot' (environment "
                                   "variable MAMMO_SCP_PROT); did you mean 'port'?")


def test_destinations_as_one_object_are_refused_asking_for_a_list(tmp_path: Path) -> None:
    one = '{"name": "pacs", "ae_title": "ORTHANC", "host": "h", "port": 104}'
    with pytest.raises(ConfigError) as from_env:
        load_settings(environ={"MAMMO_SCP_DESTINATIONS": one})
    assert "environment variable MAMMO_SCP_DESTINATIONS" in str(from_env.value)
    assert "expected a JSON list" in str(from_env.value)
    assert one in str(from_env.value)  # the value as given
    path = tmp_path / "node.toml"
    path.write_text('[destinations]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "h"\n'
                    'port = 104\n')
    with pytest.raises(ConfigError, match=r"line 1\).*\[\[destinations\]\] for each"):
        load_settings(path, environ={})


def test_passwords_are_not_repeated_in_errors() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"MAMMO_SCP_DATABASE_URL": "mysql://mammo:s3cret@db/mammo"})
    assert "s3cret" not in str(raised.value)
    assert "mysql://mammo:***@db/mammo" in str(raised.value)
