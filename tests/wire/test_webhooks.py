"""Webhooks on the wire, without a network: signatures the Standard Webhooks package
verifies, the body of a job's end, and the targets refused before any connection."""

from __future__ import annotations

import base64
import time

import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from llm_worker.wire import webhooks

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_a_signature_verifies_with_the_standard_webhooks_package() -> None:
    body = webhooks.body(
        "job-1",
        "done",
        output="Hello",
        summary={"message": {"role": "assistant", "content": "Hello"}, "usage": {"total": 3}},
        error=None,
        ended_at=1_700_000_000.5,
    )
    now = int(time.time())
    sent = webhooks.headers(webhooks.secret_bytes(SECRET), "msg_1", now, body)
    payload = Webhook(SECRET).verify(body, sent)
    assert payload["type"] == "job.done"
    assert payload["timestamp"] == "2023-11-14T22:13:20.500000Z"
    assert payload["data"] == {
        "job_id": "job-1",
        "state": "done",
        "output": "Hello",
        "message": {"role": "assistant", "content": "Hello"},
        "usage": {"total": 3},
        "finish_reason": None,
        "error": None,
    }
    # Another body, another id or another key: refused.
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"Hello", b"Hellp"), sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, {**sent, "webhook-id": "msg_2"})
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, sent)


def test_a_failed_job_says_its_error() -> None:
    body = webhooks.body("j", "failed", output="", summary={}, error="upstream 500", ended_at=0.0)
    payload = orjson.loads(body)
    assert payload["type"] == "job.failed"
    assert payload["data"]["error"] == "upstream 500"
    assert payload["data"]["message"] is None


@pytest.mark.parametrize(
    "secret",
    ["", "abc", "whsec_", "whsec_!!!!", "whsec_" + base64.b64encode(b"short").decode()],
)
def test_a_secret_not_of_the_spec_form_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        webhooks.secret_bytes(secret)


def test_a_secret_without_padding_is_taken() -> None:
    key = b"0123456789abcdef01234"  # 21 bytes: base64 with padding
    text = base64.b64encode(key).decode().rstrip("=")
    assert webhooks.secret_bytes("whsec_" + text) == key


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("https:///nohost", "a host"),
        ("https://user:pw@example.com/", "without credentials"),
        ("https://example.com/" + "a" * 2100, "at most 2048"),
        ("https://exa mple.com/", "no spaces"),
        ("https://example.com:99999/", "not a URL"),
        ("http://127.0.0.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[fc00::1]/", "private"),
    ],
)
def test_targets_refused_before_any_connection(url: str, why: str) -> None:
    with pytest.raises(webhooks.BadTarget, match=why):
        webhooks.check_url(url)


def test_private_targets_are_taken_when_allowed() -> None:
    assert webhooks.check_url("http://127.0.0.1:8080/hook", allow_private=True)
    assert webhooks.check_url("https://example.com/hook") == "https://example.com/hook"


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("93.184.215.14", False),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", False),
        ("127.0.0.2", True),
        ("::ffff:169.254.169.254", True),
        ("100.64.0.1", True),  # carrier-grade NAT: shared, not global
        ("fe80::1%eth0", True),
        ("ff02::1", True),
        ("::", True),
    ],
)
def test_resolved_addresses(address: str, refused: bool) -> None:
    assert (webhooks.address_refusal(address) is not None) is refused


def test_an_excerpt_is_short() -> None:
    assert webhooks.excerpt(b"x" * 5000) == "x" * webhooks.EXCERPT_BYTES
    assert webhooks.excerpt(b"\xff ok") == "\ufffd ok"
