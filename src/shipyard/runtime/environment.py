"""What an instance's environment is made of - the image's env, the secrets named by the
spec (taken from the starting process's environment), the database URL - in one place, so
a deploy, the database compatibility gate and drift detection agree on it."""

from __future__ import annotations

from collections.abc import Mapping

from shipyard.errors import RuntimeFailure
from shipyard.spec import Spec


def release_env(spec: Spec, image_env: Mapping[str, str], source: Mapping[str, str],
                database_url: str | None = None) -> dict[str, str]:
    """`database_url` replaces spec.database.url (the gate points a release at a scratch copy);
    otherwise the spec's URL is set unless the env already names one."""
    env = dict(image_env)
    missing = [k for k in spec.run.secret_env if k not in source]
    if missing:
        raise RuntimeFailure(
            f"secret {', '.join(missing)} for service {spec.service} is not set in the daemon's environment",
            "export it in the environment of `shipyard serve` (e.g. an EnvironmentFile in its systemd unit)")
    env.update({k: source[k] for k in spec.run.secret_env})
    url_env = spec.database.url_env if spec.database is not None else "DATABASE_URL"
    if database_url is not None:
        env[url_env] = database_url
    elif spec.database is not None:
        env.setdefault(url_env, spec.database.url)
    return env
