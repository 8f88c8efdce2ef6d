"""Write directions/pix2pix_zero_cat_to_dog.safetensors, the direction example 4 opens with, from the pix2pix-zero
authors' SD 1.4 word embeddings cat.pt and dog.pt (MIT, assets/LICENSE-pix2pix-zero): dog - cat, as the authors'
own edit uses them. SD 1.4 and SD 1.5 share the text encoder (OpenAI CLIP ViT-L/14), so it fits SD 1.5.

    P2PZ_OFFICIAL_DATA=/path/to/pix2pix-zero python scripts/build_bundled_direction.py
"""
import os
import sys

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_DIR)

NAME = "pix2pix_zero_cat_to_dog.safetensors"


def main():
    from core import direction as pack
    root = os.environ.get("P2PZ_OFFICIAL_DATA") or os.path.join(PACK_DIR, "..", "shared", "data",
                                                                 "pix2pix-zero-official")
    words = [pack.load_word_embedding(os.path.join(root, "embeddings_sd_1.4", f"{w}.pt")) for w in ("cat", "dog")]
    direction = pack.direction_from_word_embeddings(
        *words, "cat", "dog", origin="pix2pix-zero authors' SD 1.4 word embeddings cat.pt, dog.pt (MIT)")
    out = os.path.join(PACK_DIR, "directions", NAME)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if os.path.exists(out):
        os.remove(out)  # a maintainer's rebuild of the pack's own file
    print("wrote", pack.save_direction(out, direction), os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
