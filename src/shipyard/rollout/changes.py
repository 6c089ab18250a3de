"""Desired versus live: what `shipyard apply` of a spec would change, each change with its
concrete reason. Pure: the controller gathers the live spec, both manifests and the
database's pending migrations; this module only compares.

The image is compared by what it is made of (the manifests: files by path and sha256,
the environment, the command), so "new image" always comes with the files, variables
or command that made it new. Everything else is compared key by key on the spec's JSON
form. Only values already in the spec file are ever shown (secrets are names there),
and passwords in URLs are masked."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shipyard.redaction import redact_url as redact
from shipyard.spec.models import without_location

MAX_FILE_CHANGES = 200
IMAGE_KEYS = ("build", "run.command", "run.env")
"""Spec keys that only act through the image: they are reported from the manifests."""


class _Missing:
    def __repr__(self) -> str:
        return "(unset)"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Change:
    area: str                 # image | replicas | strategy | health | listen | router | run | database ...
    summary: str              # one line, for people
    path: str = ""            # the spec key, or the image file, that changed
    old: Any = None
    new: Any = None
    refused: bool = False     # apply cannot make this change (it would be refused)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["old"], d["new"] = _plain(self.old), _plain(self.new)
        return d


@dataclass
class ServicePlan:
    service: str
    exists: bool                          # a release of the service is live
    image: str                            # the image the spec builds
    live_image: str | None
    changes: list[Change] = field(default_factory=list)
    migrations: dict[str, Any] | None = None
    blocked: list[str] = field(default_factory=list)     # why apply would be refused right now
    unknown: list[str] = field(default_factory=list)     # what could not be determined

    @property
    def image_changed(self) -> bool:
        return self.image != self.live_image

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    @property
    def exit_code(self) -> int:
        """Terraform's convention: 0 nothing to do, 2 changes; 1 when it cannot tell."""
        if self.changes:
            return 2
        return 1 if self.unknown else 0

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "exists": self.exists, "image": self.image,
                "live_image": self.live_image, "image_changed": self.image_changed,
                "changes": [c.to_dict() for c in self.changes],
                "migrations": self.migrations, "blocked": self.blocked, "unknown": self.unknown,
                "exit_code": self.exit_code}


def plan_service(new_doc: dict[str, Any], new_manifest: dict[str, Any], image_id: str, *,
                 live_doc: dict[str, Any] | None, live_image: str | None,
                 live_manifest: dict[str, Any] | None, context: Path | None = None,
                 migrations: dict[str, Any] | None = None, blocked: list[str] | None = None) -> ServicePlan:
    """The whole comparison. `live_doc` None: nothing of the service runs, everything is new."""
    new_doc = without_location(new_doc)
    service = str(new_doc["service"])
    plan = ServicePlan(service, live_doc is not None, image_id, live_image, migrations=migrations,
                       blocked=list(blocked or []))
    if live_doc is None:
        plan.changes = new_service(new_doc, image_id, new_manifest)
    else:
        if image_id != live_image:
            plan.changes += image_changes(live_manifest, new_manifest, live_doc, new_doc, context)
            if live_manifest is None:
                plan.unknown.append(f"the live image {(live_image or '-')[:12]} is not in the image store: "
                                    "the files that changed cannot be listed")
        plan.changes += spec_changes(live_doc, new_doc)
    if migrations is not None:
        status = migrations.get("status")
        if status == "pending" and (migrations.get("expand") or migrations.get("held_renames")):
            plan.changes.append(Change("database", migration_line(migrations), "database.migrations",
                                       new=migrations.get("expand")))
        elif status == "unknown":
            plan.unknown.append(f"pending migrations: {migrations.get('error') or 'unknown'}")
    plan.blocked += [c.summary for c in plan.changes if c.refused]
    return plan


def new_service(doc: dict[str, Any], image_id: str, manifest: dict[str, Any]) -> list[Change]:
    files = sum(1 for e in manifest.get("files", []) if e.get("type") == "file")
    strategy = strategy_kind(doc.get("strategy"))
    return [
        Change("service", f"new service {doc['service']}: nothing of it runs yet", "service",
               new=doc["service"]),
        Change("image", f"new image {image_id[:12]} ({files} files)", "image", new=image_id),
        Change("listen", f"listen on {doc.get('listen')}", "listen", new=doc.get("listen")),
        Change("replicas", f"replicas {doc.get('replicas')}", "replicas", new=doc.get("replicas")),
        Change("strategy", f"strategy {strategy}", "strategy", new=doc.get("strategy")),
    ]


# -- the image ---------------------------------------------------------------------------

def image_changes(live: dict[str, Any] | None, new: dict[str, Any], live_doc: dict[str, Any],
                  new_doc: dict[str, Any], context: Path | None = None) -> list[Change]:
    """Why the image is new: files, environment and command, then the build settings."""
    out: list[Change] = []
    if live is not None:
        out += file_changes(live, new, live_doc, new_doc, context)
        out += env_changes(live.get("env", {}), new.get("env", {}), live_doc, new_doc)
        if live.get("command") != new.get("command"):
            old_cmd, new_cmd = live.get("command"), new.get("command")
            out.append(Change("image", f"run.command: {_argv(old_cmd)} -> {_argv(new_cmd)}", "run.command",
                              old_cmd, new_cmd))
    for path, old, new_value in diff_docs(live_doc.get("build", {}), new_doc.get("build", {}), "build"):
        if path.startswith("build.files") or path == "build.env" or path.startswith("build.env."):
            continue      # shown above as the files and variables they produce
        out.append(Change("image", f"{path}: {show(old, path)} -> {show(new_value, path)}", path, old,
                          new_value))
    if not out:
        why = ("the live image's manifest is not available" if live is None
               else "no file, variable or command differs")
        out.append(Change("image", f"new image ({why})", "image"))
    return out


def file_changes(live: dict[str, Any], new: dict[str, Any], live_doc: dict[str, Any], new_doc: dict[str, Any],
                 context: Path | None = None) -> list[Change]:
    old_files = {e["path"]: e for e in live.get("files", [])}
    new_files = {e["path"]: e for e in new.get("files", [])}
    rendered = set(_get(live_doc, "build.files") or {}) | set(_get(new_doc, "build.files") or {})
    has_steps = bool(_get(live_doc, "build.steps") or _get(new_doc, "build.steps"))
    found: list[tuple[str, str, str]] = []            # (path, how, detail)
    for path in sorted(old_files.keys() | new_files.keys()):
        a, b = old_files.get(path), new_files.get(path)
        if a is None:
            found.append((path, "added", ""))
        elif b is None:
            found.append((path, "removed", ""))
        else:
            detail = _entry_difference(a, b)
            if detail:
                found.append((path, "changed", detail))
    listed = [p for p, how, _ in found if not _is_dir(old_files.get(p) or new_files.get(p))]
    out: list[Change] = []
    for path, how, detail in found:
        entry = new_files.get(path) or old_files.get(path)
        if _is_dir(entry) and how != "changed" and any(p.startswith(path + "/") for p in listed):
            continue        # a directory that comes or goes with its files: the files say it
        origin = _origin(path, how, rendered, has_steps, context)
        noun = "directory" if _is_dir(entry) else "file"
        out.append(Change("image", _file_line(noun, path, how, detail, origin), path,
                          _entry_brief(old_files.get(path)), _entry_brief(new_files.get(path))))
    if len(out) > MAX_FILE_CHANGES:
        more = len(out) - MAX_FILE_CHANGES
        out = out[:MAX_FILE_CHANGES] + [Change("image", f"... and {more} more files", "files")]
    return out


def _origin(path: str, how: str, rendered: set[str], has_steps: bool, context: Path | None) -> str:
    if path in rendered:
        return "build.files"
    if has_steps and context is not None and how != "removed" and not (context / path).exists():
        return "build output"
    return "context"


def _file_line(noun: str, path: str, how: str, detail: str, origin: str) -> str:
    suffix = f" ({detail})" if detail and detail != "content" else ""
    if origin == "build.files":
        return f"build.files {path} {how} (config){suffix}"
    if origin == "build output":
        return f"{noun} {path} {how} in the build output (build.steps){suffix}"
    where = {"added": "added to", "removed": "removed from", "changed": "changed in"}[how]
    return f"{noun} {path} {where} the build context{suffix}"


def _entry_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    if a.get("type") != b.get("type"):
        return f"{a.get('type')} -> {b.get('type')}"
    if a.get("type") == "symlink":
        return f"target {a.get('target')} -> {b.get('target')}" if a.get("target") != b.get("target") else ""
    if a.get("type") == "file":
        parts = []
        if a.get("sha256") != b.get("sha256"):
            parts.append("content")
        if a.get("mode") != b.get("mode"):
            parts.append(f"mode {a.get('mode')} -> {b.get('mode')}")
        return ", ".join(parts)
    return ""


def _entry_brief(e: dict[str, Any] | None) -> dict[str, Any] | None:
    if e is None:
        return None
    keep = {"file": ("type", "mode", "size", "sha256"), "symlink": ("type", "target")}.get(e.get("type", ""),
                                                                                         ("type",))
    return {k: e.get(k) for k in keep}


def _is_dir(e: dict[str, Any] | None) -> bool:
    return bool(e) and e.get("type") == "dir"   # type: ignore[union-attr]


def env_changes(old: dict[str, str], new: dict[str, str], live_doc: dict[str, Any],
                new_doc: dict[str, Any]) -> list[Change]:
    """The image's environment, by name; attributed to run.env or build.env as the spec says."""
    run_names = set(_get(live_doc, "run.env") or {}) | set(_get(new_doc, "run.env") or {})
    out = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name, MISSING), new.get(name, MISSING)
        if a == b:
            continue
        key = f"{'run.env' if name in run_names else 'build.env'}.{name}"
        if a is MISSING:
            line = f"{key} added ({show(b, key)})"
        elif b is MISSING:
            line = f"{key} removed (was {show(a, key)})"
        else:
            line = f"{key}: {show(a, key)} -> {show(b, key)}"
        out.append(Change("image", line, key, a, b))
    return out


# -- the rest of the spec ------------------------------------------------------------------

def spec_changes(live_doc: dict[str, Any], new_doc: dict[str, Any]) -> list[Change]:
    """Key by key, outside what the image already covers; a switch of strategy kind is one change.
    Where each spec lives is not compared: a spec moved with its files is the same release."""
    live_doc, new_doc = without_location(live_doc), without_location(new_doc)
    out: list[Change] = []
    old_kind, new_kind = strategy_kind(live_doc.get("strategy")), strategy_kind(new_doc.get("strategy"))
    for path, old, new in diff_docs(live_doc, new_doc):
        if any(path == k or path.startswith(k + ".") for k in IMAGE_KEYS):
            continue
        area = path.split(".", 1)[0]
        if area == "strategy" and old_kind != new_kind:
            continue
        if path == "listen":
            out.append(Change("listen", f"listen {old} -> {new}: refused, moving the address moves every "
                              f"client at once (keep listen: {old}, or remove the service and deploy "
                              "it again)",
                              path, old, new, refused=True))
            continue
        if path == "replicas":
            out.append(Change("replicas", f"replicas {old} -> {new}", path, old, new))
            continue
        out.append(Change(area, f"{path}: {show(old, path)} -> {show(new, path)}", path, old, new))
    if old_kind != new_kind:
        out.append(Change("strategy", f"strategy {old_kind} -> {new_kind}", "strategy",
                          live_doc.get("strategy"), new_doc.get("strategy")))
    return out


def strategy_kind(strategy: Any) -> str:
    if isinstance(strategy, dict):
        for kind in ("canary", "blue_green"):
            if strategy.get(kind) is not None:
                return kind
    return "blue_green"


def diff_docs(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs; lists are compared whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(old.keys() | new.keys()):
            out += diff_docs(old.get(k, MISSING), new.get(k, MISSING), f"{path}.{k}" if path else str(k))
        return out
    return [] if old == new else [(path, old, new)]


# -- pending migrations --------------------------------------------------------------------

def migration_outlook(plan: dict[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """From a MigrationPlan's dict form (or why it could not be made) to what plan reports."""
    if plan is None:
        return {"status": "unknown", "error": error or "the database was not asked", "expand": [], "held": []}
    pending = {m["version"]: m for m in plan.get("pending", [])}

    def labels(versions: list[str]) -> list[str]:
        return [f"{v}_{pending[v]['name']}" if pending.get(v, {}).get("name") else v for v in versions]

    return {"status": "pending" if pending else "up_to_date", "expand": labels(plan.get("expand", [])),
            "held": labels(plan.get("held", [])), "blocking": plan.get("blocking", 0),
            "changed": plan.get("changed", []), "pg_version": plan.get("pg_version"),
            "held_renames": plan.get("held_renames", [])}


def migration_line(m: dict[str, Any]) -> str:
    parts = []
    if m.get("expand"):
        parts.append(f"{len(m['expand'])} migration(s) to apply before traffic (expand): "
                     f"{', '.join(m['expand'])}")
    if m.get("held"):
        parts.append(f"held back until `shipyard db contract` (contract): {', '.join(m['held'])}")
    if m.get("held_renames"):
        parts.append(f"the deploy stops before the new release starts: held-back rename(s) at "
                     f"{', '.join(m['held_renames'])} would leave it on the old names (see `shipyard db status`)")
    if m.get("blocking"):
        parts.append(f"{m['blocking']} blocking finding(s): see `shipyard db check`")
    return "; ".join(parts) or "database up to date"


# -- showing values ------------------------------------------------------------------------

def show(value: Any, path: str = "", width: int = 80) -> str:
    if value is MISSING or value is None:
        return "(none)"
    if isinstance(value, str):
        text = redact(value) if path.endswith("url") else value
        text = text if "\n" not in text else json.dumps(text)
    else:
        text = json.dumps(_plain(value, path), sort_keys=True, separators=(", ", ": "))
    return text if len(text) <= width else text[: width - 3] + "..."


def _plain(value: Any, path: str = "") -> Any:
    if value is MISSING:
        return None
    if isinstance(value, str) and (path.endswith("url") or "://" in value):
        return redact(value)
    if isinstance(value, dict):
        return {k: _plain(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, path) for v in value]
    return value


def _argv(argv: Any) -> str:
    return " ".join(str(a) for a in argv) if isinstance(argv, list) else show(argv)


def _get(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
