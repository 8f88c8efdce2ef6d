"""Where the pix2pix-zero authors' test photographs and per-word embeddings are (they are not in this repository).

$P2PZ_OFFICIAL_DATA names the `pix2pix-zero-official` folder; by default it is looked for at
`../shared/data/pix2pix-zero-official` next to this repository. Tests that need it skip, with the reason, when absent.
"""
import os

import pytest

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                       "pix2pix-zero-official")


def official_root() -> str:
    return os.path.normpath(os.environ.get("P2PZ_OFFICIAL_DATA") or DEFAULT)


def official_path(*parts) -> str:
    """The path of a file or folder of the authors' data; skips the calling test when it is not there."""
    path = os.path.join(official_root(), *parts)
    if not os.path.exists(path):
        pytest.skip(f"the pix2pix-zero authors' data is not at {path}: set P2PZ_OFFICIAL_DATA to the "
                    "pix2pix-zero-official folder (test_images/, embeddings_sd_1.4/)")
    return path


def copy_photo(name: str, dest_dir: str) -> str:
    """Put the authors' test photograph ``name`` (e.g. "cat_1.png") into ``dest_dir``; where their data is absent,
    write a deterministic stand-in picture of the same name instead (smooth colours, 256 px, seeded by the name), so
    graph tests still run. Returns "authors" or "stand-in"."""
    import shutil
    import zlib

    source = os.path.join(official_root(), "test_images", name)
    target = os.path.join(dest_dir, name)
    if os.path.isfile(source):
        shutil.copy(source, target)
        return "authors"
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(zlib.crc32(name.encode()))
    low = rng.random((4, 4, 3)).astype(np.float32)
    image = Image.fromarray((low * 255).astype(np.uint8)).resize((256, 256), Image.BICUBIC)
    image.save(target)
    return "stand-in"
