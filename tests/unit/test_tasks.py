"""Tests of uno_jobs.tasks: @task, Task, TaskRegistry and safe task resolution."""

from __future__ import annotations

import asyncio
import importlib
import os
import pickle
import socket
import sys
import threading
import types
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from uno_jobs.errors import (
    ConfigurationError,
    DuplicateTaskError,
    ForbiddenTaskError,
    TaskError,
    UnknownTaskError,
)
from uno_jobs.tasks import (
    MAX_TASK_NAME_LENGTH,
    Task,
    TaskRegistry,
    TaskResolver,
    check_allowed_prefix,
    default_registry,
    get_default_registry,
    task,
)

# The fixture package's import name depends on how pytest put this folder on sys.path.
PKG = f"{__name__.rpartition('.')[0]}.taskpkg".lstrip(".")
JOBS = f"{PKG}.jobs"
SUBMODULES = [f"{PKG}.{name}" for name in ("jobs", "broken", "explodes", "empty")]
PKG_REGISTRY: TaskRegistry = importlib.import_module(PKG).REGISTRY


@pytest.fixture(autouse=True)
def _unimported_fixture_modules() -> Iterator[None]:
    """Each test starts with the fixture submodules not imported and their registry empty."""

    def reset() -> None:
        for module in SUBMODULES:
            sys.modules.pop(module, None)
        for name in PKG_REGISTRY.names():
            PKG_REGISTRY.unregister(name)

    reset()
    yield
    reset()


def import_jobs() -> types.ModuleType:
    return importlib.import_module(JOBS)


# --- @task and Task -----------------------------------------------------------------------


def test_bare_decorator_registers_module_qualname_in_default_registry() -> None:
    @task
    def bare(x: int) -> int:
        """Doubles x."""
        return 2 * x

    assert bare.__qualname__.endswith("registry.<locals>.bare")
    expected = f"{__name__}.{bare.__qualname__}"
    try:
        assert isinstance(bare, Task)
        assert bare.name == expected
        assert default_registry.get(expected) is bare
        assert get_default_registry() is default_registry
        assert bare(21) == 42
    finally:
        assert default_registry.unregister(expected) is bare
    assert expected not in default_registry


def test_option_form_sets_every_option() -> None:
    registry = TaskRegistry()

    @task(
        name="generate_report",
        max_retries=3,
        retry_delay=60,
        timeout=300,
        queue="reports",
        priority="high",
        registry=registry,
    )
    async def generate_monthly_report(report_type: str, format: str) -> str:
        return f"{report_type}.{format}"

    assert generate_monthly_report.name == "generate_report"
    assert generate_monthly_report.max_retries == 3
    assert generate_monthly_report.retry_delay == 60.0
    assert generate_monthly_report.timeout == 300.0
    assert generate_monthly_report.queue == "reports"
    assert generate_monthly_report.priority == "high"
    assert generate_monthly_report.is_async is True
    assert registry.get("generate_report") is generate_monthly_report
    assert "generate_report" not in default_registry


def test_option_defaults_and_no_name() -> None:
    registry = TaskRegistry()

    @task(registry=registry)
    def plain() -> None:
        return None

    assert plain.name == f"{__name__}.test_option_defaults_and_no_name.<locals>.plain"
    assert (plain.max_retries, plain.retry_delay, plain.timeout) == (0, None, None)
    assert (plain.queue, plain.priority, plain.is_async) == (None, "normal", False)
    assert registry.names() == [plain.name]


def test_task_looks_like_the_function() -> None:
    registry = TaskRegistry()

    def original(a: int, b: int = 1) -> int:
        """Adds."""
        return a + b

    wrapped = task(name="adder", registry=registry)(original)
    assert wrapped.func is original
    assert wrapped.__wrapped__ is original
    assert wrapped.__name__ == "original"
    assert wrapped.__qualname__ == original.__qualname__
    assert wrapped.__doc__ == "Adds."
    assert wrapped.__module__ == __name__
    assert repr(wrapped) == "<Task 'adder'>"


def test_calling_sync_and_async_tasks_calls_the_function() -> None:
    registry = TaskRegistry()
    calls: list[tuple[str, int]] = []

    @task(name="sync_one", registry=registry)
    def sync_one(x: int) -> int:
        calls.append(("sync", x))
        return x + 1

    @task(name="async_one", registry=registry)
    async def async_one(x: int) -> int:
        calls.append(("async", x))
        return x * 10

    assert sync_one(1) == 2
    assert asyncio.run(async_one(2)) == 20
    assert calls == [("sync", 1), ("async", 2)]
    assert (sync_one.is_async, async_one.is_async) == (False, True)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"max_retries": "3"}, "max_retries"),
        ({"retry_delay": -1}, "retry_delay"),
        ({"retry_delay": float("nan")}, "retry_delay"),
        ({"retry_delay": float("inf")}, "retry_delay"),
        ({"retry_delay": "60"}, "retry_delay"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -5}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": False}, "timeout"),
        ({"queue": ""}, "queue"),
        ({"queue": 5}, "queue"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": "HIGH"}, "priority"),
        ({"name": ""}, "name"),
        ({"name": " padded"}, "name"),
        ({"name": "n" * (MAX_TASK_NAME_LENGTH + 1)}, "name"),
        ({"registry": {}}, "registry"),
    ],
)
def test_bad_option_raises_configuration_error_naming_it(
    options: dict[str, Any], option: str
) -> None:
    registry = TaskRegistry()
    kwargs: dict[str, Any] = {"registry": registry, **options}

    def some_task() -> None:
        return None

    with pytest.raises(ConfigurationError) as caught:
        task(**kwargs)(some_task)
    message = str(caught.value)
    assert option in message
    if option != "registry":
        assert "some_task" in message or "name" in options
    assert len(registry) == 0


def test_bad_option_message_names_the_task() -> None:
    with pytest.raises(ConfigurationError, match=r"max_retries=-2 for task 'reports\.monthly'"):
        task(name="reports.monthly", max_retries=-2, registry=TaskRegistry())(lambda: None)


def test_zero_retry_delay_is_allowed() -> None:
    zero = task(name="zero", retry_delay=0, registry=TaskRegistry())(lambda: None)
    assert zero.retry_delay == 0.0


def test_positional_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"@task\(name='generate_report'\)"):
        task("generate_report")  # type: ignore[call-overload]


def test_decorating_twice_or_a_non_callable_is_refused() -> None:
    registry = TaskRegistry()
    once = task(name="once", registry=registry)(lambda: None)
    with pytest.raises(ConfigurationError, match="already a task"):
        task(name="twice", registry=registry)(once)
    with pytest.raises(ConfigurationError, match="needs a function"):
        task(name="number", registry=registry)(42)  # type: ignore[arg-type]
    assert registry.names() == ["once"]


class _ForbiddenEnviron(Mapping[str, str]):
    def __getitem__(self, key: str) -> str:
        raise AssertionError(f"decoration read the environment ({key})")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("decoration read the environment")

    def __len__(self) -> int:
        raise AssertionError("decoration read the environment")


def test_decoration_reads_no_environment_and_opens_no_socket() -> None:
    registry = TaskRegistry()
    saved_environ, saved_socket = os.environ, socket.socket

    def no_socket(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoration opened a socket")

    # Replaced by hand, not with monkeypatch: pytest writes os.environ before fixture teardown.
    os.environ = _ForbiddenEnviron()  # type: ignore[assignment]  # noqa: B003
    socket.socket = no_socket  # type: ignore[assignment, misc]
    try:

        @task(name="quiet", max_retries=1, timeout=5, queue="q", registry=registry)
        async def quiet() -> None:
            return None

    finally:
        os.environ, socket.socket = saved_environ, saved_socket  # type: ignore[misc]
    assert registry.names() == ["quiet"]


def test_task_pickles_by_reference() -> None:
    jobs = import_jobs()
    assert pickle.loads(pickle.dumps(jobs.generate_report)) is jobs.generate_report


# --- TaskRegistry -------------------------------------------------------------------------


def _copy_function(func: types.FunctionType, module: str) -> types.FunctionType:
    """The same code defined again, as a second import of its module would."""
    copy = types.FunctionType(func.__code__, func.__globals__, func.__name__)
    copy.__qualname__ = func.__qualname__
    copy.__module__ = module
    return copy


def _first() -> str:
    return "first"


def _second() -> str:
    return "second"


def test_registry_mapping_api() -> None:
    registry = TaskRegistry()
    a = Task(_first, name="b.first")
    b = Task(_second, name="a.second")
    assert registry.register(a) is a
    registry.register(b)
    assert len(registry) == 2
    assert "b.first" in registry and "missing" not in registry
    assert registry.get("a.second") is b and registry.get("missing") is None
    assert list(registry) == ["a.second", "b.first"] == registry.names()
    assert registry.tasks() == [b, a]
    assert registry.unregister("a.second") is b
    assert registry.unregister("a.second") is None
    assert registry.names() == ["b.first"]


def test_registering_a_different_function_under_a_taken_name_is_refused() -> None:
    registry = TaskRegistry()
    first = task(name="shared", registry=registry)(_first)
    with pytest.raises(DuplicateTaskError) as caught:
        task(name="shared", registry=registry)(_second)
    assert caught.value.task_name == "shared"
    assert "shared" in str(caught.value)
    assert registry.get("shared") is first


def test_same_qualname_in_another_module_is_a_duplicate() -> None:
    registry = TaskRegistry()
    task(name="shared", registry=registry)(_first)
    other = _copy_function(_first, "some_other_module")  # type: ignore[arg-type]
    with pytest.raises(DuplicateTaskError):
        task(name="shared", registry=registry)(other)


def test_reregistering_the_same_function_replaces_it() -> None:
    registry = TaskRegistry()
    task(name="shared", registry=registry)(_first)
    again = task(name="shared", registry=registry)(_copy_function(_first, __name__))  # type: ignore[arg-type]
    assert registry.get("shared") is again
    assert len(registry) == 1


def test_main_and_module_double_import_replaces() -> None:
    registry = TaskRegistry()
    task(name="shared", registry=registry)(_first)
    as_main = task(name="shared", registry=registry)(_copy_function(_first, "__main__"))  # type: ignore[arg-type]
    assert registry.get("shared") is as_main


def test_real_module_reimport_reregisters_silently() -> None:
    first_import = import_jobs()
    sys.modules.pop(JOBS)
    second_import = import_jobs()
    assert second_import is not first_import
    assert PKG_REGISTRY.get("generate_report") is second_import.generate_report
    assert PKG_REGISTRY.get(f"{JOBS}.add") is second_import.add


def test_register_refuses_non_tasks() -> None:
    with pytest.raises(ConfigurationError):
        TaskRegistry().register(_first)  # type: ignore[arg-type]


# --- TaskResolver: what resolves ----------------------------------------------------------


def test_registered_name_resolves_without_import() -> None:
    registry = TaskRegistry()
    report = task(name="generate_report", registry=registry)(_first)
    before = set(sys.modules)
    assert TaskResolver(registry).resolve("generate_report") is report
    assert set(sys.modules) == before


def test_resolver_defaults_to_the_default_registry() -> None:
    name = "uno_jobs_tests.default_registry_task"
    registered = task(name=name)(_first)
    try:
        assert TaskResolver().resolve(name) is registered
        assert TaskResolver().registry is default_registry
    finally:
        default_registry.unregister(name)


def test_allowed_module_path_imports_and_returns_the_task() -> None:
    resolver = TaskResolver(PKG_REGISTRY, allowed_modules=[PKG])
    assert JOBS not in sys.modules
    resolved = resolver.resolve(f"{JOBS}.generate_report")
    assert JOBS in sys.modules
    assert resolved is sys.modules[JOBS].generate_report
    assert resolved.name == "generate_report" and resolved.max_retries == 3


def test_module_path_resolution_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = TaskResolver(PKG_REGISTRY, allowed_modules=[JOBS])
    first = resolver.resolve(f"{JOBS}.generate_report")

    def no_import(name: str, package: str | None = None) -> types.ModuleType:
        raise AssertionError(f"imported {name} again")

    monkeypatch.setattr(importlib, "import_module", no_import)
    assert resolver.resolve(f"{JOBS}.generate_report") is first


def test_module_path_of_a_bare_registered_task() -> None:
    resolved = TaskResolver(PKG_REGISTRY, allowed_modules=[PKG]).resolve(f"{JOBS}.add")
    assert resolved is PKG_REGISTRY.get(f"{JOBS}.add") is sys.modules[JOBS].add
    assert resolved(2, 3) == 5


def test_module_path_of_a_task_registered_under_another_name() -> None:
    resolved = TaskResolver(PKG_REGISTRY, allowed_modules=[PKG]).resolve(f"{JOBS}.build_summary")
    assert resolved.name == "build_summary"
    assert resolved is sys.modules[JOBS].make_summary


def test_short_name_from_another_module_does_not_resolve() -> None:
    import_jobs()
    assert "build_summary" in PKG_REGISTRY
    resolver = TaskResolver(PKG_REGISTRY, allowed_modules=[PKG])
    with pytest.raises(UnknownTaskError):
        resolver.resolve(f"{PKG}.empty.build_summary")


def test_concurrent_resolution_returns_one_task() -> None:
    resolver = TaskResolver(PKG_REGISTRY, allowed_modules=[PKG])
    barrier = threading.Barrier(8)
    results: list[Task[..., Any]] = []
    lock = threading.Lock()

    def work() -> None:
        barrier.wait(timeout=10)
        resolved = resolver.resolve(f"{JOBS}.generate_report")
        with lock:
            results.append(resolved)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 8
    assert all(result is sys.modules[JOBS].generate_report for result in results)


# --- TaskResolver: what is refused --------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "subprocess.run",
        "builtins.eval",
        "importlib.import_module",
        "os.path.join",
        "this.s",
        "antigravity.geohash",
    ],
)
def test_paths_outside_the_allowlist_are_refused_before_import(name: str) -> None:
    resolver = TaskResolver(PKG_REGISTRY, allowed_modules=[PKG])
    before = set(sys.modules)
    with pytest.raises(ForbiddenTaskError) as caught:
        resolver.resolve(name)
    assert set(sys.modules) == before
    module = name.rpartition(".")[0]
    assert caught.value.reason == (
        f"module {module!r} is not under an allowed prefix (allowed: {PKG})"
    )
    assert caught.value.task_name == name


def test_prefix_matches_whole_dotted_parts_only() -> None:
    with pytest.raises(ForbiddenTaskError, match=r"\(allowed: my_app\)"):
        TaskResolver(allowed_modules=["my_app"]).resolve("my_apple.x")
    # The same with a module that exists, and is not imported by the refusal.
    before = set(sys.modules)
    for allowed in (f"{PKG}.job", f"{JOBS}.add", f"{PKG}.jobs_extra"):
        with pytest.raises(ForbiddenTaskError, match="not under an allowed prefix"):
            TaskResolver(PKG_REGISTRY, allowed_modules=[allowed]).resolve(f"{JOBS}.add")
    assert set(sys.modules) == before
    assert JOBS not in sys.modules


def test_no_allowed_modules_refuses_every_path() -> None:
    before = set(sys.modules)
    with pytest.raises(ForbiddenTaskError, match=r"allowed: none configured"):
        TaskResolver(PKG_REGISTRY).resolve(f"{JOBS}.add")
    assert set(sys.modules) == before


@pytest.mark.parametrize(
    ("attr", "kind"),
    [
        ("helper", "a plain function"),
        ("NotATask", "a class"),
        ("os", "a module"),
        ("ANSWER", "an object of type int"),
    ],
)
def test_non_task_attribute_in_allowed_module_is_refused(attr: str, kind: str) -> None:
    name = f"{JOBS}.{attr}"
    with pytest.raises(ForbiddenTaskError) as caught:
        TaskResolver(PKG_REGISTRY, allowed_modules=[PKG]).resolve(name)
    assert caught.value.reason.startswith(f"{name!r} is not a task")
    assert kind in caught.value.reason


@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        ("jobs.__builtins__", "'__'"),
        ("jobs.__dict__", "'__'"),
        ("jobs.__loader__", "'__'"),
        ("__init__.add", "'__'"),
        ("jobs.__class__", "'__'"),
        (".jobs.add", "empty part"),
        ("jobs..add", "empty part"),
        ("jobs.", "empty part"),
        ("jobs.generate-report", "not a valid Python identifier"),
        ("jobs.add x", "not a valid Python identifier"),
        ("jobs.1add", "not a valid Python identifier"),
        ("jobs.add()", "not a valid Python identifier"),
        ("jobs.\u00e4dd", "not a valid Python identifier"),
        ("jobs/add", "not a valid Python identifier"),
        ("jobs.class", "keyword"),
    ],
)
def test_malformed_paths_are_refused_before_import(suffix: str, reason: str) -> None:
    name = f"{PKG}.{suffix}"
    before = set(sys.modules)
    with pytest.raises(ForbiddenTaskError) as caught:
        TaskResolver(PKG_REGISTRY, allowed_modules=[PKG]).resolve(name)
    assert reason in caught.value.reason
    assert set(sys.modules) == before


@pytest.mark.parametrize(
    "name", [".os.system", "builtins.__import__", "__builtins__.eval", "os..system"]
)
def test_dunder_and_empty_parts_refused_even_when_allowed(name: str) -> None:
    resolver = TaskResolver(allowed_modules=["os", "builtins"])
    with pytest.raises(ForbiddenTaskError):
        resolver.resolve(name)


def test_overlong_names_are_refused_before_import() -> None:
    name = f"{JOBS}." + "a" * MAX_TASK_NAME_LENGTH
    before = set(sys.modules)
    with pytest.raises(ForbiddenTaskError, match="characters long"):
        TaskResolver(PKG_REGISTRY, allowed_modules=[PKG]).resolve(name)
    assert set(sys.modules) == before


def test_name_at_the_length_limit_is_looked_up() -> None:
    name = f"{JOBS}." + "a" * (MAX_TASK_NAME_LENGTH - len(JOBS) - 1)
    assert len(name) == MAX_TASK_NAME_LENGTH
    with pytest.raises(UnknownTaskError, match="has no task"):
        TaskResolver(PKG_REGISTRY, allowed_modules=[PKG]).resolve(name)


def test_non_string_name_is_refused() -> None:
    with pytest.raises(ForbiddenTaskError, match="must be a string"):
        TaskResolver().resolve(None)  # type: ignore[arg-type]


# --- TaskResolver: unknown names ----------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "fragment"),
    [
        ("missing_module.x", "cannot import module"),
        ("jobs.nope", "has no task 'nope'"),
    ],
)
def test_unknown_paths_under_allowed_prefix(suffix: str, fragment: str) -> None:
    name = f"{PKG}.{suffix}"
    with pytest.raises(UnknownTaskError) as caught:
        TaskResolver(PKG_REGISTRY, allowed_modules=[PKG]).resolve(name)
    assert fragment in str(caught.value)
    assert caught.value.task_name == name


def test_unregistered_plain_name_is_unknown() -> None:
    before = set(sys.modules)
    with pytest.raises(UnknownTaskError, match="unknown task 'generate_report'"):
        TaskResolver(TaskRegistry(), allowed_modules=[PKG]).resolve("generate_report")
    assert set(sys.modules) == before


def test_import_error_inside_allowed_module_is_unknown_task() -> None:
    with pytest.raises(UnknownTaskError) as caught:
        TaskResolver(PKG_REGISTRY, allowed_modules=[PKG]).resolve(f"{PKG}.broken.anything")
    assert "taskpkg_missing_dependency_xyz" in str(caught.value)
    assert isinstance(caught.value.__cause__, ImportError)


def test_other_exception_inside_allowed_module_is_unknown_task() -> None:
    with pytest.raises(UnknownTaskError) as caught:
        TaskResolver(PKG_REGISTRY, allowed_modules=[PKG]).resolve(f"{PKG}.explodes.anything")
    assert "RuntimeError: boom at import time" in str(caught.value)
    assert f"{PKG}.explodes" not in sys.modules


def test_error_classes() -> None:
    forbidden = ForbiddenTaskError("my_app.util.helper", "'my_app.util.helper' is not a task")
    assert isinstance(forbidden, TaskError)
    assert str(forbidden) == (
        "forbidden task 'my_app.util.helper': 'my_app.util.helper' is not a task"
    )
    assert isinstance(UnknownTaskError("x"), LookupError)
    assert isinstance(UnknownTaskError("x"), TaskError)


# --- allowed prefixes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("my_app", "my_app"), ("my_app.tasks", "my_app.tasks"), (" my_app ", "my_app")],
)
def test_valid_prefixes(prefix: str, expected: str) -> None:
    assert check_allowed_prefix(prefix) == expected


@pytest.mark.parametrize(
    "prefix",
    ["", "my_app.", ".my_app", "my-app", "my_app.*", "__main__", "os..path", "a b", 5],
)
def test_invalid_prefixes(prefix: Any) -> None:
    with pytest.raises(ConfigurationError, match="prefix"):
        check_allowed_prefix(prefix)


def test_resolver_validates_allowed_modules() -> None:
    with pytest.raises(ConfigurationError, match="not the string"):
        TaskResolver(allowed_modules="my_app")
    with pytest.raises(ConfigurationError, match="my-app"):
        TaskResolver(allowed_modules=["my_app", "my-app"])
    resolver = TaskResolver(allowed_modules=["my_app", " my_app", "other.pkg"])
    assert resolver.allowed_modules == ("my_app", "other.pkg")
