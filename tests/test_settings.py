"""Configuration: validated once, errors name the variable, secrets never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
        ("STREAMCTL_CELERY_RETRY_COUNTDOWN", "500", "STREAMCTL_CELERY_RETRY_COUNTDOWN"),
        ("STREAMCTL_VISIBILITY_TIMEOUT", "5", "STREAMCTL_VISIBILITY_TIMEOUT: Input should be"),
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


# --- URLs: parsed and validated once; errors name the variable, never a value ------------------

#: A password that a raw URL cannot carry; each of its fragments must stay out of every message.
AWKWARD_PASSWORD = "p#a/s?s"
PASSWORD_FRAGMENTS = ("p#a", "a/s", "s?s", "#a/", "/s?")


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        (
            "REDIS_URL",
            "http://127.0.0.1:6379/0",
            "REDIS_URL: must be a redis://, rediss://, unix:// or sentinel://",
        ),
        ("REDIS_URL", "amqp://guest:guest@127.0.0.1//", "REDIS_URL: must be a redis://"),
        ("REDIS_URL", "sentinel://127.0.0.1:26379", "STREAMCTL_SENTINEL_MASTER: required"),
        ("CELERY_BROKER_URL", "sentinel://h:26379", "STREAMCTL_SENTINEL_MASTER: required"),
        ("CELERY_BROKER_URL", "sqs://queue", "CELERY_BROKER_URL: must be a redis://, rediss://"),
        ("REDIS_URL", "redis://127.0.0.1:notaport/0", "REDIS_URL: the port must be a number"),
        ("REDIS_URL", "redis://127.0.0.1:6379/zero", "REDIS_URL: the database must be a number"),
        ("REDIS_URL", "redis://:pw@[::1:6379/0", "REDIS_URL: the host is not a valid name"),
        ("REDIS_URL", "rediss://127.0.0.1/0?ssl_cert_reqs=none", "REDIS_URL: TLS options"),
        ("CELERY_BROKER_URL", "rediss://h/0?ssl_check_hostname=false", "CELERY_BROKER_URL: TLS"),
        ("CELERY_BROKER_URL", "amqps://h//?ssl=false", "CELERY_BROKER_URL: TLS options"),
    ],
)
def test_bad_url_names_the_variable(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, complaint: str
) -> None:
    clean_env.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert complaint in str(caught.value)
    assert value not in str(caught.value)


RAW_PASSWORD_URLS = [
    f"redis://:{AWKWARD_PASSWORD}@127.0.0.1:6379/0",
    f"redis://user:{AWKWARD_PASSWORD}@127.0.0.1:6379/0",
    "redis://:pa?ss@127.0.0.1:6379/0",
    "redis://:pa#ss@127.0.0.1:6379/0",
]


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        *(("REDIS_URL", url) for url in RAW_PASSWORD_URLS),
        *(("CELERY_BROKER_URL", url) for url in RAW_PASSWORD_URLS),
        ("CELERY_BROKER_URL", f"amqp://guest:{AWKWARD_PASSWORD}@127.0.0.1:5672//"),
    ],
)
def test_raw_special_characters_in_a_password_are_refused_without_showing_it(
    clean_env: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    clean_env.setenv(variable, url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{variable}: " in message and "percent-encode" in message and "%23" in message
    password = url.split("@")[0].rsplit(":", 1)[1]
    for fragment in (*PASSWORD_FRAGMENTS, password[:3], password[-3:]):
        assert fragment not in message


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("REDIS_URL", "redis://:p%23a%2Fs%3Fs@127.0.0.1:6379/0"),
        ("REDIS_URL", "rediss://user:p%23a@redis.example:6380/2"),
        ("REDIS_URL", "unix:///run/redis/redis.sock?db=1"),
        ("CELERY_BROKER_URL", "amqp://guest:p%23a%2Fs@127.0.0.1:5672//"),
        ("CELERY_BROKER_URL", "amqps://guest:guest@rabbit.example:5671/vhost"),
        ("CELERY_BROKER_URL", "rediss://:p%3Fs@127.0.0.1:6380/1"),
    ],
)
def test_good_urls_are_accepted(clean_env: pytest.MonkeyPatch, variable: str, url: str) -> None:
    clean_env.setenv(variable, url)
    settings = load_settings()
    assert (settings.redis_url if variable == "REDIS_URL" else settings.broker_url) == url
    assert "p%23a" not in repr(settings)  # the URL's password is not in the settings' repr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p%23a%2Fs@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("rediss://user:secret@redis.example:6380/2", "rediss://***@redis.example:6380/2"),
        ("https://user:pass@api.example.com/stable/", "https://***@api.example.com/stable/"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("unix:///run/redis.sock?db=1&password=secret", "unix:///run/redis.sock"),
        # Not valid, but never shown whole either: everything up to the last @ is hidden.
        ("redis://:p#a/s?s@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("not a url", "(not a URL)"),
    ],
)
def test_mask_url_hides_every_credential(url: str, shown: str) -> None:
    from config.urls import mask_url

    assert mask_url(url) == shown


# --- secrets from files (Docker and Kubernetes secrets) ----------------------------------------


@pytest.mark.parametrize(
    ("variable", "field"),
    [("SCALEENGINE_API_SECRET", "api_secret"), ("SCALEENGINE_API_KEY", "api_key")],
)
def test_account_secrets_are_read_from_files(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, variable: str, field: str
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file-123\n")
    clean_env.setenv(f"{variable}_FILE", str(secret_file))
    value = getattr(load_settings(), field)
    assert value.get_secret_value() == "from-a-file-123"  # the trailing newline stripped
    assert "from-a-file-123" not in repr(load_settings())


@pytest.mark.parametrize(
    "variable",
    [
        "SCALEENGINE_API_SECRET",
        "SCALEENGINE_API_KEY",
        "STREAMCTL_REDIS_PASSWORD",
        "STREAMCTL_BROKER_PASSWORD",
    ],
)
def test_secret_file_errors_name_the_variable_not_the_content(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    clean_env.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1")
    secret_file = tmp_path / "secret"
    secret_file.write_text("content-xyz-789\n")
    clean_env.setenv(variable, "direct-value-456")
    clean_env.setenv(f"{variable}_FILE", str(secret_file))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert variable in message and f"{variable}_FILE" in message and "not both" in message
    clean_env.delenv(variable)

    secret_file.write_text("\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert f"{variable}_FILE: the file is empty" in str(caught.value)

    clean_env.setenv(f"{variable}_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert f"{variable}_FILE: cannot read the file" in str(caught.value)
    for message in (str(caught.value),):
        assert "content-xyz" not in message and "direct-value" not in message


def test_redis_password_variables_fill_the_urls(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    clean_env.setenv("STREAMCTL_REDIS_PASSWORD", "p#a/s?s")
    clean_env.setenv("CELERY_BROKER_URL", "amqp://guest@127.0.0.1:5672//")
    clean_env.setenv("STREAMCTL_BROKER_PASSWORD", "g/u?e#st")
    settings = load_settings()
    assert settings.redis_url == "redis://:p%23a%2Fs%3Fs@127.0.0.1:6379/0"
    assert settings.broker_url == "amqp://guest:g%2Fu%3Fe%23st@127.0.0.1:5672//"
    assert "p%23a" not in repr(settings) and "g%2Fu" not in repr(settings)

    clean_env.setenv("REDIS_URL", "redis://:other@127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match=r"REDIS_URL: .*STREAMCTL_REDIS_PASSWORD"):
        load_settings()


def test_broker_password_needs_a_broker_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STREAMCTL_BROKER_PASSWORD", "x")
    with pytest.raises(ConfigError, match=r"STREAMCTL_BROKER_PASSWORD: .*CELERY_BROKER_URL"):
        load_settings()


# --- TLS options: verification always on ---------------------------------------------------------


def test_tls_files_must_exist_and_fit_the_urls(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("REDIS_URL", "rediss://127.0.0.1:6380/0")
    clean_env.setenv("STREAMCTL_REDIS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="STREAMCTL_REDIS_CA_BUNDLE: no such file"):
        load_settings()
    (tmp_path / "ca.pem").write_text("x")
    clean_env.setenv("STREAMCTL_REDIS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    clean_env.setenv("STREAMCTL_REDIS_CLIENT_KEY", str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match=r"STREAMCTL_REDIS_CLIENT_KEY: .*_REDIS_CLIENT_CERT"):
        load_settings()
    clean_env.delenv("STREAMCTL_REDIS_CLIENT_KEY")
    clean_env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")  # no TLS: the bundle would be unused
    with pytest.raises(ConfigError, match=r"STREAMCTL_REDIS_CA_BUNDLE: .*rediss://"):
        load_settings()


def test_ssl_options_verify_always(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ssl

    ca, cert, key = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    for path in (ca, cert, key):
        path.write_text("x")
    clean_env.setenv("REDIS_URL", "rediss://redis.example:6380/0")
    clean_env.setenv("STREAMCTL_REDIS_CA_BUNDLE", str(ca))
    clean_env.setenv("STREAMCTL_REDIS_CLIENT_CERT", str(cert))
    clean_env.setenv("STREAMCTL_REDIS_CLIENT_KEY", str(key))
    settings = load_settings()
    expected = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(ca),
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
        "ssl_check_hostname": True,
    }
    assert settings.redis_ssl == expected
    assert settings.broker_ssl == expected  # a Redis broker defaults to the Redis TLS files

    clean_env.setenv("CELERY_BROKER_URL", "amqps://guest:guest@rabbit.example:5671/streamctl")
    clean_env.setenv("STREAMCTL_BROKER_CA_BUNDLE", str(ca))
    settings = load_settings()
    assert settings.broker_ssl == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": str(ca),
        "certfile": None,
        "keyfile": None,
        # py-amqp turns the hostname check on exactly when server_hostname is given.
        "server_hostname": "rabbit.example",
    }
    clean_env.setenv("CELERY_BROKER_URL", "amqp://guest:guest@rabbit.example:5672/streamctl")
    clean_env.delenv("STREAMCTL_BROKER_CA_BUNDLE")
    assert load_settings().broker_ssl is None  # plain amqp: no TLS at all, nothing to verify
