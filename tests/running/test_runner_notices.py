"""The runner passes providers' notices up, and a notice is no output: a call that
failed after one is retried, or falls back, as if nothing had been said."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.model import JobSpec
from llm_worker.jobs.templates import Assistant
from llm_worker.providers import CallEnd, Notice, Provider, ProviderError
from llm_worker.running.registry import Registry
from llm_worker.running.runner import RetryPolicy, Runner


class Loading(Provider):
    """Says it loads, then fails ``failures`` times (retryable or not) before answering."""

    def __init__(self, failures: int, *, retryable: bool, answer: str = "hello") -> None:
        self.failures = failures
        self.retryable = retryable
        self.answer = answer
        self.calls = 0

    async def stream(
        self, messages: Sequence[ChatMessage], settings: Mapping[str, Any]
    ) -> AsyncIterator[str | Notice | CallEnd]:
        self.calls += 1
        yield Notice(f"loading, call {self.calls}")
        if self.calls <= self.failures:
            raise ProviderError("not loaded", retryable=self.retryable)
        yield self.answer
        yield CallEnd("stop", 1, 1)


def runner(**providers: Provider) -> Runner:
    registry: Registry[Provider] = Registry("provider")
    for name, provider in providers.items():
        registry.register(name, provider)
    return Runner(registry, Registry("insert"), Registry("pipeline"), RetryPolicy(base_delay=0))


def spec(*streams: dict[str, Any]) -> JobSpec:
    return JobSpec(assistant=Assistant.model_validate({"streams": list(streams)}), query="q")


def stream(provider: str, **fields: Any) -> dict[str, Any]:
    return {"provider": provider, "messages": [{"role": "user", "content": "{query}"}], **fields}


async def parts(runner: Runner, job: JobSpec) -> list[str | Notice]:
    return [part async for part in runner.run(job)]


async def test_a_call_that_failed_after_a_notice_is_retried() -> None:
    flaky = Loading(1, retryable=True)
    assert await parts(runner(flaky=flaky), spec(stream("flaky"))) == [
        Notice("loading, call 1"),
        Notice("loading, call 2"),
        "hello",
    ]
    assert flaky.calls == 2


async def test_a_provider_that_failed_after_a_notice_falls_back() -> None:
    broken, backup = Loading(1, retryable=False), Loading(0, retryable=False, answer="backup")
    job = spec(stream("broken", fallbacks=[{"provider": "backup"}]))
    assert await parts(runner(broken=broken, backup=backup), job) == [
        Notice("loading, call 1"),
        Notice("loading, call 1"),
        "backup",
    ]


async def test_an_inner_stream_s_notices_come_up_too_but_not_its_text() -> None:
    inner, last = Loading(0, retryable=False, answer="inner"), Loading(0, retryable=False)
    job = spec(stream("inner"), stream("last"))
    assert await parts(runner(inner=inner, last=last), job) == [
        Notice("loading, call 1"),
        Notice("loading, call 1"),
        "hello",
    ]
    # Inserts and pipelines call models through stream() and complete(): text alone.
    calls = runner(inner=Loading(0, retryable=False))
    assert [part async for part in calls.stream("inner", [], {})] == ["hello"]
    assert await calls.complete("inner", [], {}) == "hello"
