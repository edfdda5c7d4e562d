"""The README, docs/ and .env.example stay true to the code, and to each other."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from llm_worker.config import Settings
from llm_worker.jobs.messages import ChatMessage
from llm_worker.jobs.templates import Assistant
from llm_worker.wire.protocol import parse_request

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
SERVER_TYPES = {
    "resp_add",
    "pending",
    "running",
    "reasoning",
    "tool_call",
    "refusal",
    "notice",
    "reset",
    "done",
    "failed",
    "cancelled",
    "status",
    "error",
    "pong",
}


def setting_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def test_every_setting_is_in_env_example_with_its_default() -> None:
    values = dotenv_values(ROOT / ".env.example")
    assert set(values) == setting_names()
    from_file = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_file == defaults


def test_every_setting_is_in_the_configuration_table() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", page, re.MULTILINE))
    assert table == setting_names()


def json_examples() -> list[pytest.ParameterSet]:
    """Each JSON example of every page: a block that opens an object, or each line of one."""
    examples = []
    for page in PAGES:
        name = page.relative_to(ROOT)
        blocks = re.findall(r"```json(?: lines)?\n(.*?)```", page.read_text(), re.DOTALL)
        for block in blocks:
            text = block.strip()
            found = (
                [text]
                if text.startswith("{\n")
                else [line for line in text.splitlines() if line.strip()]
            )
            examples.extend(
                pytest.param(example, id=f"{name}-{len(examples)}") for example in found
            )
    return examples


def test_the_json_examples_are_found() -> None:
    pages = {example.id.split("-")[0] for example in json_examples()}
    assert {"docs/protocol.md", "docs/providers.md", "docs/security.md"} <= pages


@pytest.mark.parametrize("example", json_examples())
def test_json_examples_in_the_docs_are_valid_messages(example: str) -> None:
    message = json.loads(example)
    if "streams" in message:  # a template shown on its own
        Assistant.model_validate(message)
        return
    if message["type"].startswith("job."):  # a webhook's body (docs/webhooks.md)
        assert set(message) == {"type", "timestamp", "data"}
        assert message["data"]["state"] == message["type"].removeprefix("job.")
        return
    if message["type"] in SERVER_TYPES:
        assert set(message) <= {
            "type",
            "id",
            "job_id",
            "message",
            "seq",
            "position",
            "state",
            "output",
            "error",
            "code",
            "ref",
            "attempt",
            "listen_token",
            "usage",
            "finish_reason",
            "providers",
            "index",
            "name",
            "arguments",
            "webhook",
        }
        if message["type"] == "done" and "message" in message:
            ChatMessage.model_validate(message["message"])
    else:
        parse_request(example)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (a ``#`` line inside a code block is none)."""
    text = FENCED.sub("", page.read_text())
    return {anchor(heading) for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def links(page: Path) -> set[str]:
    """The targets of a page's Markdown links, outside code blocks, but those off the repo."""
    text = FENCED.sub("", page.read_text())
    targets = set(re.findall(r"\]\(([^)\s]+)\)", text))
    return {target for target in targets if not re.match(r"[a-z]+:", target)}


def leads_somewhere(page: Path, target: str) -> bool:
    """Whether a link of a page names a file of the repo, and a heading of it if any."""
    path, _, heading = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    if not linked.is_relative_to(ROOT) or not linked.exists():
        return False
    return not heading or (linked.suffix == ".md" and heading in anchors(linked))


@pytest.mark.parametrize(
    "page", [*PAGES, ROOT / "BENCHMARKS.md"], ids=lambda page: str(page.relative_to(ROOT))
)
def test_links_lead_to_files_of_the_repo_and_to_their_headings(page: Path) -> None:
    assert [target for target in links(page) if not leads_somewhere(page, target)] == []


def test_files_the_docs_name_are_in_the_repo() -> None:
    """A path such as `tests/system/test_faults.py` or `bench/attacks.py` names a real file."""
    named = {
        (page, path)
        for page in PAGES
        for path in re.findall(r"`((?:tests|bench|scripts|src)/[\w./-]+)`", page.read_text())
    }
    assert len(named) > 10, "the pattern finds no paths"
    assert [(page.name, path) for page, path in named if not (ROOT / path).exists()] == []


def test_links_are_found_within_and_between_pages() -> None:
    targets = set().union(*(links(page) for page in PAGES))
    assert any(target.startswith("#") for target in targets)
    assert any(".md#" in target for target in targets)
    assert any(target.startswith("../src/") for target in targets)


def test_every_doc_is_linked_from_the_readme() -> None:
    readme = links(ROOT / "README.md")
    for page in PAGES[1:]:
        assert any(target.split("#")[0] == f"docs/{page.name}" for target in readme), page.name


FIGURE = re.compile(r"(?<![\w.])\d[\d,]*\.\d+(?![\w.])|(?<![\w.,])\d{1,3}(?:,\d{3})+(?![\w,])")


def test_no_page_repeats_a_figure_of_benchmarks_md() -> None:
    """BENCHMARKS.md's measured figures are said there once; the docs link to them.

    A figure is a number with a decimal point or a thousands separator in one of
    its tables or in bold; round thousands (limits such as 10,000) are settings.
    """
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    measured = "\n".join(
        [line for line in benchmarks.splitlines() if line.startswith("|")]
        + re.findall(r"\*\*([^*]+)\*\*", benchmarks)
    )
    figures = {f for f in FIGURE.findall(measured) if not re.fullmatch(r"\d{1,3}(,000)+", f)}
    assert len(figures) > 50, "the pattern finds no figures"
    for page in PAGES:
        repeated = set(FIGURE.findall(FENCED.sub("", page.read_text()))) & figures
        assert repeated == set(), page.name
