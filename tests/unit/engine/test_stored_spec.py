"""A spec read back from the store resolves its relative paths where its spec file was,
whatever path the service record names now (or none, as for a resumed rollout before)."""

from __future__ import annotations

from pathlib import Path

from shipyard.engine.actions import spec_from_doc
from shipyard.spec import parse_spec

SPEC = """\
service: shop
listen: 127.0.0.1:9
run: {command: [python3, -m, shop]}
database: {url: "postgresql://u@h/db", migrations: ./m2}
"""


def test_a_stored_spec_keeps_its_directory(tmp_path: Path) -> None:
    stored = parse_spec(SPEC, "shop.yaml", tmp_path).to_stored_dict()
    for spec_path in ("", "/elsewhere/shop.yaml"):
        spec = spec_from_doc(stored, spec_path)
        assert spec.database is not None
        assert spec.resolve_path(spec.database.migrations or "") == tmp_path.resolve() / "m2"


def test_a_document_stored_without_its_directory_falls_back_to_the_services_spec_file(tmp_path: Path) -> None:
    legacy = parse_spec(SPEC, "shop.yaml", tmp_path).to_json_dict()
    spec = spec_from_doc(legacy, str(tmp_path / "shop.yaml"))
    assert spec.base_dir == tmp_path.resolve()
