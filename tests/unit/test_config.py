"""``uno_jobs.config``: where URLs and folders come from, and URL redaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from uno_jobs.config import (
    embedded_broker_path,
    redact_url,
    resolve_allowed_modules,
    resolve_broker_url,
    resolve_store_url,
    uno_jobs_home,
)

ENV_NAMES = (
    "UNO_JOBS_HOME",
    "UNO_JOBS_BROKER_URL",
    "UNO_JOBS_STORE_URL",
    "UNO_JOBS_ALLOWED_MODULES",
    "XDG_DATA_HOME",
)


@pytest.fixture(autouse=True)
def bare_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No uno_jobs variables; HOME is a tmp folder so the fallback home is predictable."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "user"
    monkeypatch.setenv("HOME", str(home))
    return home


# -- broker ---------------------------------------------------------------------------------


def test_broker_default_is_embedded() -> None:
    assert resolve_broker_url() == "embedded://"
    assert resolve_broker_url(None) == "embedded://"


def test_broker_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_BROKER_URL", "redis://env:6379/1")
    assert resolve_broker_url() == "redis://env:6379/1"


def test_broker_option_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_BROKER_URL", "redis://env:6379/1")
    assert resolve_broker_url("amqp://opt//") == "amqp://opt//"


def test_empty_broker_values_fall_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_BROKER_URL", "")
    assert resolve_broker_url("") == "embedded://"


# -- store ----------------------------------------------------------------------------------


def test_store_default_is_sqlite_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNO_JOBS_HOME", str(tmp_path / "h"))
    expected = f"sqlite://{(tmp_path / 'h').resolve()}/jobs.sqlite3"
    assert resolve_store_url(None, "embedded://") == expected
    assert resolve_store_url(None, "amqp://guest:guest@h//") == expected
    assert expected.startswith("sqlite:///"), "an absolute path, as open_store requires"


def test_store_from_environment_beats_the_redis_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_STORE_URL", "redis://store:6379/9")
    assert resolve_store_url(None, "redis://broker:6379/0") == "redis://store:6379/9"
    assert resolve_store_url(None, "embedded://") == "redis://store:6379/9"


def test_store_option_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_STORE_URL", "redis://store:6379/9")
    assert resolve_store_url("memory://x", "redis://broker:6379/0") == "memory://x"


@pytest.mark.parametrize(
    ("broker", "store"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://h:6379/0?visibility_timeout=5", "redis://h:6379/0"),
        ("redis://:pw@h:6379/2?key_prefix=app:", "redis://:pw@h:6379/2?key_prefix=app:"),
        (
            "redis://h/1?visibility_timeout=5&key_prefix=p:&polling_interval=1&restore_interval=2",
            "redis://h/1?key_prefix=p:",
        ),
        ("rediss://u:pw@h:6380/0?connect_timeout=1", "rediss://u:pw@h:6380/0"),
    ],
)
def test_redis_broker_means_the_same_redis_store(broker: str, store: str) -> None:
    assert resolve_store_url(None, broker) == store


def test_derived_redis_store_url_is_accepted_by_open_store() -> None:
    from uno_jobs.store import open_store

    url = resolve_store_url(None, "redis://127.0.0.1:6379/3?visibility_timeout=5&key_prefix=z:")
    store = open_store(url)  # connects lazily: nothing is sent
    try:
        assert store.url == url
        assert cast(Any, store).key_prefix == "z:", "the store shares the broker's prefix"
    finally:
        store.close()


# -- home -----------------------------------------------------------------------------------


def test_home_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_HOME", str(tmp_path / "h"))
    assert uno_jobs_home() == (tmp_path / "h").resolve()


def test_relative_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNO_JOBS_HOME", "rel/home")
    assert uno_jobs_home() == tmp_path.resolve() / "rel" / "home"


def test_home_expands_user(bare_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_HOME", "~/jobs")
    assert uno_jobs_home() == (bare_env / "jobs").resolve()


def test_home_under_xdg_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert uno_jobs_home() == (tmp_path / "xdg").resolve() / "uno_jobs"


def test_uno_jobs_home_beats_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("UNO_JOBS_HOME", str(tmp_path / "h"))
    assert uno_jobs_home() == (tmp_path / "h").resolve()


def test_home_fallback_is_local_share(bare_env: Path) -> None:
    assert uno_jobs_home() == (bare_env / ".local" / "share").resolve() / "uno_jobs"


def test_home_is_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_HOME", str(tmp_path / "h"))
    uno_jobs_home()
    resolve_store_url(None, "embedded://")
    assert not (tmp_path / "h").exists()


# -- embedded broker path -------------------------------------------------------------------


@pytest.mark.parametrize("url", ["embedded://", "embedded:///", "embedded://?visibility_timeout=3"])
def test_embedded_broker_default_path(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNO_JOBS_HOME", str(tmp_path))
    assert embedded_broker_path(url) == tmp_path.resolve() / "broker.sqlite3"


def test_embedded_broker_explicit_path() -> None:
    assert embedded_broker_path("embedded:///srv/q/broker.db") == Path("/srv/q/broker.db")
    assert embedded_broker_path("embedded:///srv/q/b.db?polling_interval=1") == Path("/srv/q/b.db")


# -- redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@h:5672//", "amqp://guest:***@h:5672//"),
        ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://:secret@h:6379/0?key_prefix=a:", "redis://:***@h:6379/0?key_prefix=a:"),
        # Percent-encoded and raw special characters in the password.
        ("amqp://u:p%40ss%3Aw%2Fd@h:5672/v", "amqp://u:***@h:5672/v"),
        ("amqp://u:p@ss@h:5672/v", "amqp://u:***@h:5672/v"),
        ("amqp://u:pa:ss:wd@h/v", "amqp://u:***@h/v"),
        ("amqp://u:p%23w!$&'()*+,;=@h/v", "amqp://u:***@h/v"),
        # Non-numeric port: redaction must not trip over it.
        ("redis://u:secret@h:port/0", "redis://u:***@h:port/0"),
        ("redis://u:secret@[::1]:6379/0", "redis://u:***@[::1]:6379/0"),
    ],
)
def test_redact_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "amqp://h:5672//",
        "redis://user@h:6379/0",
        "embedded://",
        "embedded:///tmp/b.sqlite3",
        "sqlite:///tmp/jobs.sqlite3",
        "redis://h:notaport/0",
        "memory://x",
    ],
)
def test_redact_leaves_urls_without_password_alone(url: str) -> None:
    assert redact_url(url) == url


def test_redact_unparsable_url() -> None:
    assert redact_url("redis://[::1/0") == "<unparsable url>"


@pytest.mark.parametrize(
    "url", ["redis://:se#cret@h:6379/0", "amqp://u:se/cret@h//", "amqp://u:se?cret@h//"]
)
def test_redact_hides_raw_passwords_that_break_the_netloc(url: str) -> None:
    assert "cret" not in redact_url(url)


# -- allowed modules ------------------------------------------------------------------------


def test_allowed_modules_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_ALLOWED_MODULES", "env_mod")
    assert resolve_allowed_modules(["a.b", "c"]) == ("a.b", "c")
    assert resolve_allowed_modules(("x",)) == ("x",)
    assert resolve_allowed_modules([]) == (), "an explicit empty list allows nothing"


def test_allowed_modules_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNO_JOBS_ALLOWED_MODULES", " my_app.tasks, other ,, ")
    assert resolve_allowed_modules(None) == ("my_app.tasks", "other")


def test_allowed_modules_default_is_none() -> None:
    assert resolve_allowed_modules(None) == ()
