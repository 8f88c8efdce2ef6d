"""A small learned world for measuring edits (issue 28): NOT part of the node pack.

Nothing in ``core/``, ``nodes/`` or the pack's ``__init__.py`` imports this package; ``bench/``, ``tests/`` and
the training command do.

  world.render    seeded procedural renderer of captioned 64 x 64 images with ground truth (numpy only), caption
                  templates, sentence sets per concept word, the fixed train / held-out split
  world.judge     a small CNN that reads shape, colour, background, position and size, plus an object mask
  world.taesd     the TAESD autoencoder in plain torch with ComfyUI's key layout (4 or 16 latent channels), and its
                  training on the world's renders
  world.loop      what every trainer shares: seeding, resumable atomic checkpoints, progress, timing
  world.sd15      an SD 1.x-layout UNet trained on the world (needs ComfyUI), saved as a checkpoint file
  world.evaluate  text-to-image through stock ComfyUI nodes, scored by the judge
  world.train     ``python -m world.train --out DIR --seed 0 [--part vae|judge|sd15|all] [--minutes N] [--reduced]``

Importing ``world`` itself imports nothing heavy.
"""
