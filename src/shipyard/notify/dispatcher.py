"""Delivering notifications: one bounded queue and one worker per webhook, retries with
exponential backoff and jitter, and nothing that the rollout path ever waits for.

The daemon hands every event to `offer` (synchronously, from wherever it is emitted).
Events that may matter are put on an intake queue; a background task turns them into
notifications, finds the webhooks of the spec that produced them and queues a delivery
for each. A receiver that is down fills its own queue only: the oldest waiting delivery
is dropped, and an event in the service's log says so."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from shipyard.errors import StoreUnavailable
from shipyard.notify.events import CANDIDATES, Notification, RolloutFacts, classify
from shipyard.notify.formats import render
from shipyard.notify.webhook import post, safe_url
from shipyard.rollout.records import Event
from shipyard.spec.models import NotificationsSpec, WebhookSpec

if TYPE_CHECKING:
    from shipyard.engine.ports import Store

log = logging.getLogger("shipyard.notify")

INTAKE = 1000
MAX_BACKOFF = 300.0
CLOSE_GRACE = 1.0
"""On shutdown, how long queued deliveries may still go out."""


def backoff_delay(attempt: int, base: float, rng: Callable[[], float] = random.random,
                  cap: float = MAX_BACKOFF) -> float:
    """Wait before retry number `attempt` (0 = first retry): doubling, with jitter in its
    upper half so receivers coming back up are not hit by every sender at once."""
    full = min(cap, base * 2 ** attempt)
    return full / 2 + rng() * full / 2


@dataclass
class Stats:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0


@dataclass
class Worker:
    service: str
    hook: WebhookSpec
    settings: NotificationsSpec
    queue: asyncio.Queue[Notification]
    stats: Stats = field(default_factory=Stats)
    task: asyncio.Task[None] | None = None
    busy: bool = False

    @property
    def idle(self) -> bool:
        return not self.busy and self.queue.empty()


class Dispatcher:
    def __init__(self, store: Store, env: Mapping[str, str],
                 client: httpx.AsyncClient | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: Callable[[], float] = random.random) -> None:
        self.store = store
        self.env = env
        self.sleep = sleep
        self.rng = rng
        self._client = client
        self._own_client = client is None
        self._intake: asyncio.Queue[Event] = asyncio.Queue(INTAKE)
        self._workers: dict[tuple[str, str], Worker] = {}
        self._specs: dict[str, tuple[NotificationsSpec | None, list[str]]] = {}   # rollout id -> its settings
        self._started = False
        self._task: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, limits=httpx.Limits(max_connections=50))
        self._task = asyncio.create_task(self._route(), name="notify intake")

    async def close(self) -> None:
        """Let what is queued go out for a moment, then stop; never waits for a slow receiver."""
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE):
                while not self._intake.empty() or not all(w.idle for w in self._workers.values()):
                    await asyncio.sleep(0.02)
        tasks = [t for t in [self._task, *(w.task for w in self._workers.values())] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        if self._own_client and self._client is not None:
            await self._client.aclose()

    def stats(self) -> dict[str, dict[str, Any]]:
        return {f"{w.service} {safe_url(w.hook.url)}": vars(w.stats) | {"queued": w.queue.qsize()}
                for w in self._workers.values()}

    # -- the rollout path: never blocks, never raises ------------------------------------

    def offer(self, event: Event) -> None:
        """Called on the event loop's thread (where the store is used)."""
        if event.kind not in CANDIDATES or not self._started:
            return
        try:
            if self._intake.full():
                self._intake.get_nowait()
                log.warning("notification intake full: oldest event dropped")
            self._intake.put_nowait(event)
        except Exception:   # a notification is never worth failing the caller
            log.exception("could not queue event %s for notification", event.kind)

    # -- background ----------------------------------------------------------------------

    async def _route(self) -> None:
        while True:
            event = await self._intake.get()
            try:
                self._fan_out(event)
            except Exception:
                log.exception("notification of event %s failed", event.id)

    def _fan_out(self, event: Event) -> None:
        settings, secret_names = self._settings(event)
        if settings is None or not settings.webhooks:
            return
        note = classify(event, self._facts)
        if note is None:
            return
        for hook in settings.webhooks:
            if hook.wants(note.event):
                self._push(self._worker(event.service, hook, settings, secret_names), note)

    def _facts(self, rollout_id: str) -> RolloutFacts | None:
        r = self.store.get_rollout(rollout_id)
        return RolloutFacts(r.strategy, str(r.phase)) if r else None

    def _settings(self, event: Event) -> tuple[NotificationsSpec | None, list[str]]:
        """The notifications section of the spec behind an event (the rollout's own spec,
        else the live release's), and the names of the secrets it may not leak."""
        if event.rollout_id is not None:
            cached = self._specs.get(event.rollout_id)
            if cached is None:
                cached = _notifications(self.store.rollout_spec(event.rollout_id))
                if len(self._specs) > 256:
                    self._specs.clear()
                self._specs[event.rollout_id] = cached
            return cached
        svc = self.store.get_service(event.service)
        return _notifications(svc.live.spec if svc is not None and svc.live is not None else None)

    def _worker(self, service: str, hook: WebhookSpec, settings: NotificationsSpec,
                secret_names: list[str]) -> Worker:
        key = (service, json.dumps([hook.model_dump(mode="json"), settings.model_dump(mode="json", exclude={"webhooks"}),
                                    secret_names], sort_keys=True))
        w = self._workers.get(key)
        if w is None:
            w = self._workers[key] = Worker(service, hook, settings, asyncio.Queue(settings.queue))
            w.task = asyncio.create_task(self._deliver_all(w, secret_names), name=f"webhook {safe_url(hook.url)}")
        return w

    def _push(self, w: Worker, note: Notification) -> None:
        if w.queue.full():
            lost = w.queue.get_nowait()
            w.stats.dropped += 1
            self._note(w.service, "notify.dropped",
                                 f"webhook {safe_url(w.hook.url)} is behind: dropped the oldest waiting notification "
                                 f"({lost.event}); {w.stats.dropped} dropped so far", lost.rollout_id,
                                 {"url": safe_url(w.hook.url), "dropped": w.stats.dropped, "event": lost.event})
        w.queue.put_nowait(note)

    async def _deliver_all(self, w: Worker, secret_names: list[str]) -> None:
        while True:
            note = await w.queue.get()
            w.busy = True
            try:
                await self._deliver(w, note, secret_names)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery crashed")
            finally:
                w.busy = False

    async def _deliver(self, w: Worker, note: Notification, secret_names: list[str]) -> None:
        assert self._client is not None
        hook, settings = w.hook, w.settings
        missing = [name for name in hook.secret_headers.values() if name not in self.env]
        if missing:
            self._failed(w, note, f"secret {', '.join(missing)} is not set in the daemon's environment")
            return
        headers = dict(hook.headers) | {h: self.env[name] for h, name in hook.secret_headers.items()}
        secrets = [self.env[n] for n in [*secret_names, *hook.secret_headers.values()] if n in self.env]
        body = render(note, hook.format, secrets)
        for attempt in range(settings.retries + 1):
            outcome = await post(self._client, hook.url, body, headers, settings.timeout)
            if outcome.ok:
                w.stats.sent += 1
                return
            if not outcome.retry or attempt == settings.retries:
                self._failed(w, note, f"{outcome.detail} after {attempt + 1} attempt{'s' if attempt else ''}")
                return
            w.stats.retries += 1
            await self.sleep(backoff_delay(attempt, settings.backoff, self.rng))

    def _failed(self, w: Worker, note: Notification, why: str) -> None:
        w.stats.failed += 1
        log.warning("webhook %s: %s not delivered: %s", safe_url(w.hook.url), note.event, why)
        self._note(w.service, "notify.failed",
                             f"webhook {safe_url(w.hook.url)}: {note.event} not delivered: {why}", note.rollout_id,
                             {"url": safe_url(w.hook.url), "event": note.event})


    def _note(self, service: str, kind: str, message: str, rollout_id: str | None, data: dict[str, Any]) -> None:
        """An event about the notifications themselves; one the store refuses is not worth a
        failed delivery loop (the store logs the outage, the warning above says what was lost)."""
        with contextlib.suppress(StoreUnavailable):
            self.store.add_event(service, kind, message, rollout_id, data)


def _notifications(doc: dict[str, Any] | None) -> tuple[NotificationsSpec | None, list[str]]:
    if not doc or not doc.get("notifications"):
        return None, []
    try:
        settings = NotificationsSpec.model_validate(doc["notifications"])
    except ValidationError as e:   # stored by an older or newer shipyard: do without, say why
        log.warning("notifications section not understood: %s", e)
        return None, []
    return settings, list((doc.get("run") or {}).get("secret_env") or [])
