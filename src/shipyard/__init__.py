"""shipyard: zero-downtime deploys (blue-green, canary, immutable images) for services on your own machines."""

__version__ = "0.1.0"
