"""The remote helper: a small program shipyard ships to each host (a zipapp, named by its
sha256) and talks to over one SSH channel per helper process.

Helper side (bundled: standard library plus the few stdlib-only shipyard modules listed in
bundle.py): protocol, helper, store, instances, supervisor, host. Controller side (never
bundled): bundle (builds the zipapp), client (speaks the protocol over any pair of asyncio
streams) and transfer (one image to one host, sending only the objects it lacks).
This ``__init__`` is bundled as it is, so it must stay import-free."""
