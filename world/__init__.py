"""A small learned world for measuring edits (issue 28): NOT part of the node pack.

Nothing in ``core/``, ``nodes/`` or the pack's ``__init__.py`` imports this package (tests/test_world_render.py
checks it); ``bench/``, ``tests/`` and the training command do.

  world.render    seeded procedural renderer of captioned 64 x 64 images with ground truth (numpy only), caption
                  templates, sentence sets per concept word, the fixed train / val / held-out test split
  world.judge     a small CNN that reads shape, colour, size, position and background, plus an object mask
  world.taesd     the TAESD autoencoder in plain torch with ComfyUI's key layout (4 or 16 latent channels: the
                  latent units of SD 1.x and SD 3.x, ``LATENT_FORMATS``), and its training on the renders
  world.loop      what every trainer shares: per-step seeded randomness (resumable without RNG state), atomic
                  checkpoints, progress bar, deadlines, cached render sets
  world.sd15      an SD 1.x-layout UNet (ComfyUI's own UNetModel) trained on the world, saved with a seeded CLIP-L
                  text encoder and the TAESD as one checkpoint that CheckpointLoaderSimple detects as SD 1.5
  world.sd3       an SD 3.x-layout MMDiT (ComfyUI's own, rectified flow) trained on the world, saved with the same
                  seeded CLIP-L as its only text encoder and the TAESD placed in 16 latent channels, as one checkpoint
                  that CheckpointLoaderSimple detects as SD3
  world.evaluate  text-to-image from held-out captions through stock ComfyUI nodes, scored by the judge
  world.train     ``python -m world.train --out DIR --seed 0 [--part judge|vae|sd15|sd3|all] [--minutes N] [--steps N]
                  [--reduced]``

What each part reaches, how long it trains and the edit tables measured on it: bench/README.md, "The learned world".
"""
