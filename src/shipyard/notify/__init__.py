"""Notifications: webhooks told about rollouts and drift, delivered in the background.

`Dispatcher.offer` is the only entry point the daemon calls (once per event); it never
blocks and never raises, so a receiver that is slow or down cannot hold a rollout back."""

from .dispatcher import Dispatcher
from .events import Notification, classify
from .formats import render
from .webhook import Outcome, post

__all__ = ["Dispatcher", "Notification", "Outcome", "classify", "post", "render"]
