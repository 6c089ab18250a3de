"""Immutable images: build a service's directory into a content-addressed, verifiable tree.

Usable as a library on its own (it depends only on shipyard.errors)::

    store = ImageStore(state.images)
    image = await store.build(BuildInput(service="shop", context=Path("/src/shop"), ...))
    tree = store.verified_tree(image.id)   # read-only, re-hashed: safe to start from
"""

from shipyard.images.build import BuildInput
from shipyard.images.ignore import IgnoreRules
from shipyard.images.manifest import VerifyReport
from shipyard.images.store import Image, ImageStore

__all__ = ["BuildInput", "IgnoreRules", "Image", "ImageStore", "VerifyReport"]
