"""Configuration: validated once, errors name the variable, secrets never shown."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from config.settings import Settings, load_settings
from worker.errors import ConfigError

ACCOUNT = {
    "SCALEENGINE_CDN": "158",
    "SCALEENGINE_API_KEY": "K" * 32,
    "SCALEENGINE_API_SECRET": "hush-123",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("SCALEENGINE_", "STREAMCTL_")) or name in (
            "REDIS_URL",
            "CELERY_BROKER_URL",
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))  # no .env from the checkout
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.api_url == "https://api.scaleengine.net/stable/"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.broker_url == settings.redis_url
    assert settings.results_channel == "streamctl:results"
    assert settings.results_log == "streamctl:results:log"


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("SCALEENGINE_CDN", "abc", "SCALEENGINE_CDN: Input should be a valid integer"),
        ("SCALEENGINE_CDN", "-3", "SCALEENGINE_CDN: Input should be greater than 0"),
        ("SCALEENGINE_API_URL", "http://api.example.com/", "SCALEENGINE_API_URL: must use https"),
        ("SCALEENGINE_API_URL", "ftp://x/", "SCALEENGINE_API_URL: must be an http(s) URL"),
        ("STREAMCTL_READ_TIMEOUT", "0", "STREAMCTL_READ_TIMEOUT: Input should be greater than 0"),
        ("STREAMCTL_CA_BUNDLE", "/no/such/bundle.pem", "STREAMCTL_CA_BUNDLE: no such file"),
        ("STREAMCTL_LOG_FORMAT", "xml", "STREAMCTL_LOG_FORMAT"),
        ("REDIS_URL", "localhost", "REDIS_URL: must be a URL"),
        (
            "STREAMCTL_VISIBILITY_TIMEOUT",
            "1000",
            "STREAMCTL_VISIBILITY_TIMEOUT (1000 s) must be shorter",
        ),
        ("STREAMCTL_CELERY_RETRY_COUNTDOWN", "200", "STREAMCTL_CELERY_RETRY_COUNTDOWN"),
        ("STREAMCTL_WORKER_PROCESSES", "0", "STREAMCTL_WORKER_PROCESSES"),
    ],
)
def test_bad_value_names_the_variable(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, complaint: str
) -> None:
    clean_env.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert complaint in str(caught.value)


def test_worker_processes_metrics_ports_must_fit(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STREAMCTL_WORKER_PROCESSES", "4")
    clean_env.setenv("STREAMCTL_METRICS_PORT", "65533")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "STREAMCTL_METRICS_PORT" in str(caught.value) and "3 after it" in str(caught.value)
    clean_env.setenv("STREAMCTL_METRICS_PORT", "65532")  # 65532..65535
    assert load_settings().metrics_port == 65532


def test_plain_http_is_allowed_on_loopback_only(clean_env: pytest.MonkeyPatch) -> None:
    for url in ("http://127.0.0.1:8089/stable/", "http://localhost/", "http://[::1]:80/"):
        clean_env.setenv("SCALEENGINE_API_URL", url)
        assert load_settings().api_url == url


def test_worker_needs_the_account(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SCALEENGINE_CDN", "158")
    with pytest.raises(ConfigError, match="SCALEENGINE_API_KEY, SCALEENGINE_API_SECRET"):
        load_settings().require_credentials()
    for name, value in ACCOUNT.items():
        clean_env.setenv(name, value)
    assert load_settings().require_credentials() == (158, "K" * 32, "hush-123")


def test_secret_is_not_in_repr_or_errors(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in ACCOUNT.items():
        clean_env.setenv(name, value)
    settings = load_settings()
    assert "hush-123" not in repr(settings) and "hush-123" not in str(settings)
    assert "K" * 32 not in repr(settings)
    clean_env.setenv("STREAMCTL_READ_TIMEOUT", "hush-123")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hush-123" not in str(caught.value)


def test_dotenv_file_is_read(clean_env: pytest.MonkeyPatch, tmp_path: object) -> None:
    with open(".env", "w") as env_file:
        env_file.write("SCALEENGINE_CDN=77\nSTREAMCTL_RESULTS_CHANNEL=from-dotenv\n")
    settings = load_settings()
    assert settings.cdn == 77 and settings.results_channel == "from-dotenv"
    clean_env.setenv("SCALEENGINE_CDN", "78")
    assert load_settings().cdn == 78  # the environment wins


def test_worker_command_stops_with_the_variable_named(tmp_path: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    env["SCALEENGINE_CDN"] = "not-a-number"
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker"],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "SCALEENGINE_CDN" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_setting_has_a_default_or_is_optional() -> None:
    for name, field in Settings.model_fields.items():
        assert not field.is_required(), f"{name} must not be required at load time"
