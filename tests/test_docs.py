"""The README and .env.example stay true to the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from llm_worker.config import Settings
from llm_worker.jobs.templates import Assistant
from llm_worker.wire.protocol import parse_request

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SERVER_TYPES = {
    "resp_add",
    "pending",
    "running",
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


def test_every_setting_is_in_the_readme_table() -> None:
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", README, re.MULTILINE))
    assert table == setting_names()


def json_examples() -> list[str]:
    blocks = re.findall(r"```json(?: lines)?\n(.*?)```", README, re.DOTALL)
    lines = []
    for block in blocks:
        text = block.strip()
        if text.startswith("{\n"):
            lines.append(text)
        else:
            lines.extend(line for line in text.splitlines() if line.strip())
    return lines


@pytest.mark.parametrize("example", json_examples())
def test_json_examples_in_the_readme_are_valid_messages(example: str) -> None:
    message = json.loads(example)
    if "streams" in message:  # a template shown on its own
        Assistant.model_validate(message)
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
            "ref",
            "attempt",
            "listen_token",
            "usage",
            "finish_reason",
            "providers",
        }
    else:
        parse_request(example)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_within_the_readme_lead_to_its_headings() -> None:
    anchors = {anchor(h) for h in re.findall(r"^#+ (.+)$", README, re.MULTILINE)}
    links = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert links, "no links found: the pattern is wrong"
    assert links - anchors == set()
