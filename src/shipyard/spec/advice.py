"""Warnings about a valid spec: things it may do but probably should not. Kept pure (a Spec
in, lines out) so `validate`, `plan` and `deploy` all say the same thing.

A value in run.env is printed by `plan`, stored with every rollout and written into the
image manifest; a secret belongs in run.secret_env, whose values only the daemon's
environment holds. A name "looks like a secret" when it contains PASSWORD, PASSWD, SECRET or
CREDENTIAL anywhere (PGPASSWORD, CLIENT_SECRET), or has TOKEN, KEY, APIKEY, PWD or PASS as one
of its _-separated words (GITHUB_TOKEN, API_KEY, DB_PASS) - so KEYBOARD_LAYOUT, MONKEY_MODE or
TOKENIZER_PATH are left alone."""

from __future__ import annotations

import re

from .models import Spec

_ANYWHERE = ("PASSWORD", "PASSWD", "SECRET", "CREDENTIAL")
_WORDS = frozenset({"TOKEN", "TOKENS", "KEY", "KEYS", "APIKEY", "PWD", "PASS"})


def looks_secret(name: str) -> bool:
    upper = name.upper()
    if any(part in upper for part in _ANYWHERE):
        return True
    return any(word in _WORDS for word in re.split(r"_+", upper))


def spec_warnings(spec: Spec) -> list[str]:
    """One line per run.env key that looks like a secret, pointing to run.secret_env."""
    return [f"{spec.source}: run.env.{name} looks like a secret, but run.env values are shown by `plan`, "
            f"stored with every rollout and in the image manifest; move it to run.secret_env: [{name}] "
            f"and set {name} in the daemon's environment"
            for name in spec.run.env if looks_secret(name)]
