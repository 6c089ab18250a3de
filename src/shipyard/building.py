"""From a spec to an image build: the one place that maps `build:` and `run:` onto the
image library's input (the library itself knows nothing of specs)."""

from __future__ import annotations

from shipyard.images import BuildInput
from shipyard.spec import Spec


def build_input(spec: Spec) -> BuildInput:
    return BuildInput(
        service=spec.service,
        context=spec.context_dir,
        ignore=list(spec.build.ignore),
        steps=[list(s) for s in spec.build.steps],
        env=dict(spec.build.env),
        files=dict(spec.build.files),
        run_command=list(spec.run.command),
        run_env=dict(spec.run.env),
    )
