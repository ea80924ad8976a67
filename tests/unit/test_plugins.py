"""The plugin manager: discovery through entry points, control, errors, contributions."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

from uno_jobs.config import PluginSettings
from uno_jobs.errors import ConfigurationError
from uno_jobs.plugins import BUILTIN_NAME, PluginError, Plugins

HERE = Path(__file__).parent
FIXTURES = "plugin_fixtures"


@pytest.fixture(autouse=True)
def _fixtures_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def make_dist(
    tmp_path: Path, dist: str, version: str, plugins: dict[str, str]
) -> list[importlib.metadata.EntryPoint]:
    """Entry points of a fake installed distribution (a dist-info folder on disk)."""
    info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {FIXTURES}.{module}" for name, module in plugins.items())
    (info / "entry_points.txt").write_text(f"[uno_jobs]\n{lines}\n")
    found = importlib.metadata.Distribution.at(info)
    return list(found.entry_points.select(group="uno_jobs"))


def plugins_with(eps: list[importlib.metadata.EntryPoint], **settings: object) -> Plugins:
    return Plugins(PluginSettings(**settings), entry_points=eps)  # type: ignore[arg-type]


def test_builtins_are_registered_through_the_same_hooks() -> None:
    plugins = plugins_with([])
    assert set(plugins.worker_types()) == {"sync", "thread", "async", "process", "distributed"}
    assert set(plugins.retry_policies()) >= {"fixed", "exponential"}
    assert set(plugins.job_stores()) >= {"memory", "sqlite", "redis"}
    assert "log" in plugins.middleware()
    [builtin] = plugins.infos()
    assert builtin.name == BUILTIN_NAME and builtin.builtin
    assert builtin.contributes["worker types"] == [
        "async",
        "distributed",
        "process",
        "sync",
        "thread",
    ]


def test_an_entry_point_plugin_contributes_and_is_listed(tmp_path: Path) -> None:
    eps = make_dist(tmp_path, "acme-uno", "2.3.4", {"acme": "good_plugin"})
    plugins = plugins_with(eps)
    assert plugins.lookup("worker types", "good").__name__ == "GoodWorker"
    assert plugins.lookup("middleware", "good-mw").__name__ == "GoodMiddleware"
    assert "good-policy" in plugins.retry_policies()
    info = next(i for i in plugins.infos() if i.name == "acme")
    assert (info.distribution, info.version, info.builtin) == ("acme-uno", "2.3.4", False)
    assert info.contributes == {
        "worker types": ["good"],
        "middleware": ["good-mw"],
        "retry policies": ["good-policy"],
    }
    assert "uno_jobs_worker_boot" in info.hooks


def test_autoload_off_keeps_builtins_and_loads_only_the_explicit_list(tmp_path: Path) -> None:
    eps = make_dist(tmp_path, "acme-uno", "1.0", {"acme": "good_plugin"})
    off = plugins_with(eps, autoload=False)
    assert "good" not in off.worker_types()
    assert "async" in off.worker_types()
    explicit = plugins_with(eps, autoload=False, explicit=("acme",))
    assert "good" in explicit.worker_types()


def test_a_blocked_plugin_is_not_loaded(tmp_path: Path) -> None:
    eps = make_dist(tmp_path, "acme-uno", "1.0", {"acme": "good_plugin"})
    assert "good" not in plugins_with(eps, blocked=("acme",)).worker_types()


def test_an_explicit_plugin_that_is_not_installed_is_an_error() -> None:
    with pytest.raises(PluginError, match=r"'nope'.*not installed"):
        plugins_with([], explicit=("nope",))


def test_an_import_error_names_the_distribution(tmp_path: Path) -> None:
    eps = make_dist(tmp_path, "broken-dist", "0.9", {"broken": "import_error_plugin"})
    with pytest.raises(PluginError) as info:
        plugins_with(eps)
    text = str(info.value)
    assert "broken-dist 0.9" in text and "not_a_real_dependency_of_anything" in text


def test_a_hook_with_a_wrong_signature_names_the_distribution(tmp_path: Path) -> None:
    eps = make_dist(tmp_path, "sloppy-dist", "0.1", {"sloppy": "wrong_signature_plugin"})
    with pytest.raises(PluginError) as info:
        plugins_with(eps)
    assert "sloppy-dist 0.1" in str(info.value) and "surprise" in str(info.value)


def test_an_unknown_hook_name_names_the_distribution(tmp_path: Path) -> None:
    eps = make_dist(tmp_path, "typo-dist", "0.1", {"typo": "unknown_hook_plugin"})
    with pytest.raises(PluginError) as info:
        plugins_with(eps)
    assert "typo-dist" in str(info.value) and "uno_jobs_worker_typos" in str(info.value)


def test_two_plugins_contributing_one_name_is_an_error_naming_both(tmp_path: Path) -> None:
    eps = make_dist(tmp_path, "clash-dist", "3.0", {"clash": "clashing_plugin"})
    plugins = plugins_with(eps)
    with pytest.raises(PluginError) as info:
        plugins.worker_types()
    text = str(info.value)
    assert "'async'" in text and "uno-jobs" in text and "clash-dist 3.0" in text


def test_lookup_of_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown worker type 'nope' \(known: async"):
        plugins_with([]).lookup("worker types", "nope")


def test_runtime_registration_refreshes_contributions() -> None:
    plugins = plugins_with([])
    assert "good" not in plugins.worker_types()
    import plugin_fixtures.good_plugin as good

    plugins.register(good, "runtime-good")
    assert "good" in plugins.worker_types()
    plugins.unregister("runtime-good")
    assert "good" not in plugins.worker_types()


def test_the_per_job_path_never_calls_pluggy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Contributions are computed once: repeated look-ups do not call the hooks again."""
    plugins = plugins_with([])
    plugins.worker_types()
    calls = []
    hook = plugins.pm.hook.uno_jobs_worker_types
    for impl in hook.get_hookimpls():
        original = impl.function
        monkeypatch.setattr(impl, "function", lambda o=original: calls.append(1) or o())
    for _ in range(100):
        plugins.worker_types()
    assert calls == []


def test_worker_boot_hook_runs_when_a_worker_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from uno_jobs.plugins import reset_plugins
    from uno_jobs.worker import AsyncWorker

    eps = make_dist(tmp_path, "acme-uno", "1.0", {"acme": "good_plugin"})
    reset_plugins(plugins_with(eps))
    monkeypatch.setenv("UNO_JOBS_HOME", str(tmp_path / "home"))
    try:
        import plugin_fixtures.good_plugin as good

        async def main() -> None:
            worker = AsyncWorker(
                worker_id="booted-1", broker_url="memory://", store_url="memory://boot"
            )
            await worker.start()
            await worker.shutdown()

        asyncio.run(main())
        assert "booted-1" in good.BOOTED
    finally:
        reset_plugins(None)
    assert sys.modules.get("plugin_fixtures.good_plugin") is not None
