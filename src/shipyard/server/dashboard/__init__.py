"""The live dashboard the daemon serves beside its API: static pages that poll two
read-only JSON endpoints, and send promote / abort / rollback to the token-protected API."""
