"""shop: a small real HTTP service that shipyard deploys in its examples and benchmarks.

Python standard library only, so its image builds offline with no build steps. Run it with
`python -m shop --port 8000` from the directory that holds `shop/` and `release.toml`."""
