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

Measured (seed 0, world seed 0; 2-core AMD EPYC shared with other jobs, load 5-8):
- judge: 1000 steps, batch 48, 20 min; held-out test split (2000 renders of held-out combinations): shape, colour,
  size, position, background all 100 %; with the training augmentation applied 100 / 100 / 99.95 / 100 / 100 %;
  mask IoU 0.94 (0.93 augmented).
- TAESD v1 (900 steps, unweighted loss, 13 min): held-out PSNR 20.7 dB, but the judge read only 41 % of shapes on its
  reconstructions (97 % colours): too blurry for the world. v2 (object weighted 5x, 3000 steps, 40 min): held-out
  PSNR 23.8 dB; the judge reads its reconstructions at shape 88.4 %, colour 100 %, size 94.4 %, position and
  background 100 %: small stars / squares still blur. Below the 95 % gate for starting the UNet training.
- SD 1.x UNet (16.2 M, one level at 8 x 8): 10-18 s per batch-24 training step with other jobs running (a 3-step
  smoke run loaded through CheckpointLoaderSimple as SD15 with a 12-layer text encoder and TAESD; CLIPTextEncode
  of the file matched the training embeddings to 2e-3).
"""
