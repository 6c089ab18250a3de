"""The daemon's face: the HTTP API (token-authenticated) and the `serve` entry point."""
