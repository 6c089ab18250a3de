"""The remote helper: a small program shipyard ships to each host (a zipapp, named by its
sha256) and talks to over one SSH channel per helper process.

Helper side (bundled, standard library plus the few stdlib-only shipyard modules listed in
bundle.py): protocol, helper, objects, trees, instances, supervisor, host. Controller side (never bundled):
bundle (builds the zipapp) and client (speaks the protocol over any pair of asyncio streams).
This package's ``__init__`` must stay import-free: the bundle replaces it with a stub."""
