"""A spec as stored with a slot or a rollout, parsed back (once per document: the supervisor
asks every tick). Its own module so that slot helpers (baseline.py) read stored specs without
importing actions.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shipyard.spec import Spec

_parsed: dict[tuple[str, str], Spec] = {}


def spec_from_doc(doc: dict[str, Any], spec_path: str = "") -> Spec:
    """A spec as stored with a slot or a rollout (to_stored_dict: it names its own base dir, so
    its relative paths resolve where the spec file was). `spec_path` (the service's spec file)
    anchors documents stored before they did. Validation costs about a millisecond and the
    supervisor asks every tick, so equal documents are parsed once."""
    key = (json.dumps(doc, sort_keys=True), spec_path)
    spec = _parsed.get(key)
    if spec is None:
        if len(_parsed) > 64:
            _parsed.clear()
        base = Path(spec_path).parent if spec_path else Path("/")
        spec = _parsed[key] = Spec.from_json_dict(doc, base)
    return spec
