"""The `shipyard` command: a thin client of the daemon's HTTP API (plus the verbs that need
no daemon). `entry` is where it starts and must stay light; `app` wires the verb groups.
This file imports nothing, so that `shipyard.cli.entry` loads only itself."""
