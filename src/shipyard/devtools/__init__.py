"""Tools for driving a real daemon from Python: the demo, steady traffic that records which
release answered (loadgen), and a `shipyard serve` child process (daemonproc). Used by
`shipyard demo`, the integration tests and the benchmarks; the daemon never imports them."""
