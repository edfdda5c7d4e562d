"""The web console at /console, in a real headless Chromium (Debian's, driven by
Playwright, which downloads no browser of its own) against a real worker: a job
submitted streams into the page, a bad template's error shows beside the editor, a
slow job is cancelled from the job view, the overview lists the jobs with their
outcomes, keys are sent from the key field, and nothing is loaded from elsewhere.

``UPDATE_SCREENSHOT=1`` also copies the screenshot to docs/console.png, for the README.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from llm_worker.server.access import key_hash
from llm_worker.testing.openai_server import OpenAIServer, Reply
from tests.conftest import RunningWorker, StartWorker
from tests.support.wsclient import assistant

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKENS = [f" word{i}" for i in range(12)]
FULL = "".join(TOKENS)
# Generous: a loaded CI machine runs a browser, a worker and a model server at once.
TIMEOUT_MS = 20_000
ALICE = "key-of-alice-0123456789"
ADMIN = "key-of-the-admin-0123456789"

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="chromium is not installed (run_tests.sh installs Debian's package)",
)


def query_of(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def scripted(body: dict[str, Any]) -> Reply:
    """The loopback model: a slow endless answer, a refusal, or TOKENS."""
    query = query_of(body)
    if query.startswith("slow"):
        return Reply(tokens=[" slow"] * 2000, delay=0.05)
    if query.startswith("fail"):
        return Reply(status=400, error="the model refused this one")
    return Reply(tokens=TOKENS, delay=0.01)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            await browser.close()


async def open_console(browser: Browser, worker: RunningWorker) -> tuple[Page, list[str]]:
    """The console in a new page; the URLs of every request the page makes."""
    page = await browser.new_page(viewport={"width": 1280, "height": 980})
    page.set_default_timeout(TIMEOUT_MS)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    response = await page.goto(f"{worker.http_url}/console")
    assert response is not None and response.status == 200
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    return page, requested


async def submit(page: Page, query: str, template: dict[str, Any] | str) -> None:
    text = template if isinstance(template, str) else json.dumps(template, indent=2)
    await page.fill("#template", text)
    await page.fill("#query", query)
    await page.click("#submit")


async def submitted_job_id(page: Page, previous: str) -> str:
    """The id the job view shows once a new job was added."""
    await expect(page.locator("#job-id")).not_to_have_value(previous)
    job_id = await page.input_value("#job-id")
    assert job_id
    return job_id


async def text_after(http_url: str, job_id: str, after: int) -> str:
    """The job's text after ``after``, from the HTTP API itself."""
    async with httpx.AsyncClient(base_url=http_url) as http:
        response = await http.get(f"/v1/jobs/{job_id}/events", params={"after": after})
    frames = [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    return "".join(f["message"] for f in frames if f["type"] == "running")


async def test_the_console_runs_follows_cancels_and_lists_jobs(
    start_worker: StartWorker, upstream: OpenAIServer, browser: Browser, tmp_path: Path
) -> None:
    upstream.handler = scripted
    worker = await start_worker()
    page, requested = await open_console(browser, worker)
    template = assistant()
    expect.set_options(timeout=TIMEOUT_MS)

    # The catalog of what this deployment offers.
    await expect(page.locator("#providers")).to_contain_text("openai")
    await expect(page.locator("#inserts")).to_contain_text("history")
    await expect(page.locator("#pipelines")).to_contain_text("echo")

    # A job: its answer streams into the output, its events into the log.
    await submit(page, "hello", template)
    done_id = await submitted_job_id(page, "")
    await expect(page.locator("#output")).to_have_text(FULL)
    await expect(page.locator("#job-state")).to_have_text("done")
    await expect(page.locator('#events li[data-type="done"]')).to_have_count(1)
    seqs = [
        int(s)
        for s in await page.locator("#events li[data-seq]").evaluate_all(
            "items => items.map(item => item.dataset.seq)"
        )
    ]
    assert seqs == sorted(set(seqs)) and len(seqs) >= 3, seqs
    assert query_of(upstream.requests[-1].body) == "hello"

    # A template the server refuses: its 400 message beside the editor, no job.
    bad = assistant()
    bad["streams"][0]["provider"] = "opena1"
    await submit(page, "hello", bad)
    await expect(page.locator("#template-error")).to_contain_text(
        "invalid assistant template: assistant.streams[0]: unknown provider 'opena1'"
    )
    await submit(page, "hello", '{"streams": [')
    await expect(page.locator("#template-error")).to_contain_text("not valid JSON")
    assert await page.input_value("#job-id") == done_id

    # A job the model refuses: failed, with the reason.
    await submit(page, "fail now", template)
    failed_id = await submitted_job_id(page, done_id)
    await expect(page.locator("#template-error")).to_have_text("")
    await expect(page.locator("#job-state")).to_have_text("failed")
    await expect(page.locator("#job-error")).to_contain_text("the model refused this one")

    # A slow job, running (the overview counts it), cancelled from the job view.
    await submit(page, "slow one", template)
    slow_id = await submitted_job_id(page, failed_id)
    await expect(page.locator("#output")).to_contain_text("slow slow")
    await expect(page.locator("#running")).to_have_text("1")
    await page.click("#cancel")
    await expect(page.locator("#job-state")).to_have_text("cancelled")
    await expect(page.locator('#events li[data-type="cancelled"]')).to_have_count(1)
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        status = (await http.get(f"/v1/jobs/{slow_id}")).json()
    assert status["state"] == "cancelled"

    # The overview: nothing left running, each job with its outcome.
    await expect(page.locator("#running")).to_have_text("0")
    await expect(page.locator("#queued")).to_have_text("0")
    await expect(page.locator("#connections")).to_have_text("0")
    for job_id, state in [(done_id, "done"), (failed_id, "failed"), (slow_id, "cancelled")]:
        row = page.locator(f'#recent tr[data-job-id="{job_id}"]')
        await expect(row.locator("td.state")).to_have_text(state)
    failed_row = page.locator(f'#recent tr[data-job-id="{failed_id}"]')
    await expect(failed_row.locator("td.error")).to_contain_text("the model refused this one")
    listed = await page.locator("#recent tbody tr").evaluate_all(
        "rows => rows.map(row => row.dataset.jobId)"
    )
    assert listed == [slow_id, failed_id, done_id]  # newest first

    # Following a job by id, resuming after a seq: the rest of its text only.
    await page.fill("#job-id", done_id)
    await page.fill("#after", str(seqs[2]))
    await page.click("#follow")
    await expect(page.locator("#job-state")).to_have_text("done")
    rest = await text_after(worker.http_url, done_id, seqs[2])
    assert rest and rest != FULL
    await expect(page.locator("#output")).to_have_text(rest)
    await page.click("#status")
    await expect(page.locator("#job-position")).to_have_text(f"{len(FULL)} characters of output")

    # Opening a listed job replays it whole.
    await failed_row.locator("td.job button").click()  # a job of another outcome first
    await expect(page.locator("#job-state")).to_have_text("failed")
    await page.locator(f'#recent tr[data-job-id="{done_id}"] td.job button').click()
    await expect(page.locator("#job-id")).to_have_value(done_id)
    await expect(page.locator("#output")).to_have_text(FULL)
    await expect(page.locator("#job-state")).to_have_text("done")

    # Offline: every request the page made went to the worker itself.
    assert requested and all(url.startswith(worker.http_url + "/") for url in requested), requested
    assert f"{worker.http_url}/client.js" in requested

    await page.locator("#template").evaluate("editor => { editor.scrollTop = 0; }")
    screenshot = tmp_path / "console.png"
    await page.screenshot(path=screenshot, full_page=True)
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, ROOT / "docs" / "console.png")


async def test_the_console_sends_the_key_of_its_key_field(
    start_worker: StartWorker, upstream: OpenAIServer, browser: Browser
) -> None:
    upstream.handler = scripted
    worker = await start_worker(api_keys=f"{ALICE},{ADMIN}", admin_keys=key_hash(ADMIN))
    page, _ = await open_console(browser, worker)
    expect.set_options(timeout=TIMEOUT_MS)
    await expect(page.locator("#catalog-error")).to_contain_text("an API key is needed")
    await expect(page.locator("#recent-error")).to_contain_text("an API key is needed")

    # A tenant's key: it runs jobs, but may not list them all.
    await page.fill("#api-key", ALICE)
    await page.press("#api-key", "Enter")
    await expect(page.locator("#providers")).to_contain_text("openai")
    await expect(page.locator("#catalog-error")).to_have_text("")
    await submit(page, "hello", assistant())
    job_id = await submitted_job_id(page, "")
    await expect(page.locator("#output")).to_have_text(FULL)
    await expect(page.locator("#recent-error")).to_contain_text("only an admin key may list jobs")

    # The key stays with the tab (sessionStorage), through a reload.
    await page.reload()
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await expect(page.locator("#api-key")).to_have_value(ALICE)

    # An admin key lists every tenant's jobs.
    await page.fill("#api-key", ADMIN)
    await page.press("#api-key", "Enter")
    row = page.locator(f'#recent tr[data-job-id="{job_id}"]')
    await expect(row.locator("td.state")).to_have_text("done")
    await expect(row.locator("td.tenant")).to_have_text(f"key-{key_hash(ALICE)[:8]}")
    await expect(page.locator("#recent-error")).to_have_text("")


async def test_the_console_loads_nothing_from_elsewhere(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        page = await http.get("/console")
        script = await http.get("/console.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    for text in (page.text, script.text):
        assert "http://" not in text.replace(worker.http_url, "") and "https://" not in text
    assert 'from "/client.js"' in script.text
