"""Notifications: which events become which notification, what the bodies look like, that
no secret leaves in a body, the backoff schedule, and the spec section."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shipyard import __version__
from shipyard.notify.dispatcher import backoff_delay
from shipyard.notify.events import Notification, RolloutFacts, classify
from shipyard.notify.formats import hide, json_body, render, slack_body
from shipyard.notify.webhook import safe_url
from shipyard.rollout.records import Event
from shipyard.spec import SpecInvalid, parse_spec

BLUE_GREEN = RolloutFacts("blue_green", "switching")
CANARY = RolloutFacts("canary", "promoting")


def ev(kind: str, rollout_id: str | None = "shop-3", **data: object) -> Event:
    return Event(7, 1700000000.0, "shop", rollout_id, kind, f"message of {kind}", dict(data))


@pytest.mark.parametrize(("event", "facts", "expected"), [
    (ev("rollout.created"), BLUE_GREEN, "rollout.started"),
    (ev("canary.weight", weight=10), CANARY, "rollout.step"),
    (ev("rollout.phase", phase="paused"), CANARY, "rollout.paused"),
    (ev("rollout.phase", phase="awaiting_promotion"), BLUE_GREEN, "rollout.paused"),
    (ev("rollout.phase", phase="promoting"), CANARY, "rollout.promoted"),
    (ev("rollout.phase", phase="progressing"), CANARY, None),
    (ev("traffic.switched"), BLUE_GREEN, "rollout.promoted"),
    (ev("traffic.switched"), CANARY, None),                 # a canary was promoted when it entered promoting
    (ev("traffic.switched", rollout_id=None), None, None),
    (ev("rollout.succeeded", phase="succeeded"), BLUE_GREEN, "rollout.succeeded"),
    (ev("rollout.failed", phase="failed"), CANARY, "rollout.failed"),
    (ev("rollout.aborted", phase="aborted"), CANARY, "rollout.aborted"),
    (ev("drift.found", rollout_id=None), None, "drift.found"),
    (ev("drift.cleared", rollout_id=None), None, "drift.cleared"),
    (ev("instance.started"), BLUE_GREEN, None),
    (ev("canary.weight", rollout_id=None), None, None),
])
def test_classify(event: Event, facts: RolloutFacts | None, expected: str | None) -> None:
    note = classify(event, lambda rid: facts)
    assert (note.event if note else None) == expected


def test_the_phase_comes_from_the_event_or_else_the_rollout() -> None:
    assert classify(ev("rollout.phase", phase="paused"), lambda rid: CANARY).phase == "paused"
    assert classify(ev("canary.weight", weight=5), lambda rid: RolloutFacts("canary", "progressing")).phase \
        == "progressing"
    assert classify(ev("drift.found", rollout_id=None), lambda rid: None).phase is None


NOTE = Notification("rollout.aborted", "shop", "shop-3", "aborted", "deploy shop-3 aborted: <by hand> & gone",
                    1700000000.0, 42, {"timings": {"starting": 1.5}})


def test_json_body_has_the_documented_keys() -> None:
    body = json_body(NOTE)
    assert body == {"event": "rollout.aborted", "service": "shop", "rollout_id": "shop-3", "phase": "aborted",
                    "message": NOTE.message, "data": {"timings": {"starting": 1.5}}, "ts": 1700000000.0,
                    "id": 42, "shipyard_version": __version__}


def test_slack_body_has_text_and_escaped_blocks() -> None:
    body = slack_body(NOTE)
    assert body["text"] == "[shop: rollout.aborted] deploy shop-3 aborted: <by hand> & gone"
    section = body["blocks"][0]["text"]["text"]
    assert section == "*shop: rollout.aborted*\ndeploy shop-3 aborted: &lt;by hand&gt; &amp; gone"
    context = body["blocks"][1]["elements"][0]["text"]
    assert "rollout shop-3" in context and "phase aborted" in context and "2023-11-14 22:13:20 UTC" in context


def test_no_secret_survives_in_a_body() -> None:
    note = Notification("drift.found", "shop", None, None,
                        "env API_KEY changed from hunter22-secret to x; db postgresql://app:pw0rd@db/shop",
                        1.0, 1, {"token": "abc", "env": {"API_KEY": "hunter22-secret"}, "n": 3})
    for fmt in ("json", "slack"):
        text = str(render(note, fmt, ["hunter22-secret", "ab"]))     # "ab" is too short to hunt for
        assert "hunter22-secret" not in text and "pw0rd" not in text and "'abc'" not in text, text
    body = render(note, "json", ["hunter22-secret"])
    assert body["message"] == "env API_KEY changed from *** to x; db postgresql://app:***@db/shop"
    assert body["data"] == {"token": "***", "env": {"API_KEY": "***"}, "n": 3}


def test_hide_leaves_text_alone_without_secrets() -> None:
    assert hide({"a": ["b", 1]}, []) == {"a": ["b", 1]}


def test_webhook_urls_are_shown_without_their_path() -> None:
    assert safe_url("https://hooks.slack.com/services/T0/B0/XXXX") == "https://hooks.slack.com/…"
    assert safe_url("http://127.0.0.1:8123/hook?key=1") == "http://127.0.0.1:8123/…"


def test_backoff_doubles_with_jitter_in_the_upper_half_and_a_cap() -> None:
    assert [backoff_delay(n, 1.0, lambda: 0.0) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff_delay(n, 1.0, lambda: 1.0) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_delay(30, 1.0, lambda: 1.0) == 300.0


BASE = "service: shop\nlisten: 127.0.0.1:8080\nrun: {command: [x]}\n"


def test_spec_section_defaults_and_round_trip(tmp_path: Path) -> None:
    spec = parse_spec(BASE + "notifications:\n  webhooks:\n    - url: http://127.0.0.1:9/h\n"
                      "      secret_headers: {Authorization: HOOK_TOKEN}\n  timeout: 2s\n", "shop.yaml", tmp_path)
    n = spec.notifications
    assert n is not None and n.timeout == 2.0 and n.retries == 5 and n.backoff == 1.0 and n.queue == 100
    hook = n.webhooks[0]
    assert hook.format == "json" and hook.wants("drift.found") and hook.wants("rollout.step")
    assert parse_spec(BASE, "shop.yaml", tmp_path).notifications is None

    again = parse_spec(yaml.safe_dump(spec.to_json_dict()), "shop.yaml", tmp_path)
    assert again == spec


def test_spec_section_chooses_events(tmp_path: Path) -> None:
    spec = parse_spec(BASE + "notifications: {webhooks: [{url: 'https://x.example/h', format: slack, "
                      "events: [rollout.aborted, drift.found]}]}\n", "shop.yaml", tmp_path)
    assert spec.notifications is not None
    hook = spec.notifications.webhooks[0]
    assert hook.wants("rollout.aborted") and not hook.wants("rollout.started")


@pytest.mark.parametrize(("text", "error"), [
    ("notifications: {webhooks: [{url: 'ftp://x/h'}]}", "notifications.webhooks[0].url"),
    ("notifications: {webhooks: [{url: 'http://x/h', events: [rollout.exploded]}]}",
     "notifications.webhooks[0].events[0]"),
    ("notifications: {webhooks: [{url: 'http://x/h', format: teams}]}", "notifications.webhooks[0].format"),
    ("notifications: {webhooks: [{url: 'http://x/h', headers: {X-A: '1'}, secret_headers: {x-a: A}}]}",
     "header x-a is given twice"),
    ("notifications: {webhooks: [{url: 'http://x/h', secret_headers: {X-A: 'not a name'}}]}",
     "notifications.webhooks[0].secret_headers.X-A"),
    ("notifications: {timeout: 5}", "notifications.timeout"),
    ("notifications: {retries: 21}", "notifications.retries"),
])
def test_spec_section_errors(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_spec(BASE + text + "\n", "shop.yaml", tmp_path)
    assert error in str(info.value)
