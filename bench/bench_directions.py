"""Sentences encoded per second by Build Edit Direction's encoder (ComfyUI's CLIP, the pack's batched path).

    COMFYUI_PATH=/path/to/ComfyUI python bench/bench_directions.py [--sentences 1000] [--device cpu|cuda]

Encodes the same generated sentences with (1) the tiny 2-layer, 32-wide CLIP of the tests and (2) a 12-layer CLIP-L
(ComfyUI's SD 1.x text encoder config, 123M parameters, random weights), through exactly the code the node runs
(`nodes.direction.clip_sentence_encoder` inside `core.direction.mean_embedding`), and prints sentences per second
and the time one direction (source + target sentences) takes. A sentence-at-a-time loop (what one
CLIPTextEncode per sentence would cost) is timed on the first 100 sentences for comparison.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (the benchmark runs the pack's ComfyUI encoder)")

    from fixtures import tiny_models
    from scripts import comfy_host

    comfy_host.boot(device=args.device)
    pack = comfy_host.pack_module()
    direction_nodes = sys.modules[pack.__name__ + ".nodes.direction"]
    import torch

    import comfy.sd
    import comfy.sd1_clip
    from comfy.supported_models_base import ClipTarget
    from core.direction import mean_embedding
    from core.sentences import generate_sentences

    sentences = generate_sentences("cat", args.sentences, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{len(sentences)} sentences")
    print(f"{'encoder':<34} {'params':>8} {'batched s':>10} {'sent/s':>9} {'one-by-one sent/s':>18} "
          f"{'direction s':>12}")
    for label, config in (("tiny CLIP (2 layers, 32 wide)", dict(tiny_models.TINY_CLIP_CONFIG)),
                          ("CLIP-L (12 layers, 768 wide)", {})):
        target = ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
        clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": config, "dtype": torch.float32})
        tiny_models.init_module_weights(clip.cond_stage_model, 0)
        params = sum(p.numel() for p in clip.cond_stage_model.parameters())
        encode = direction_nodes.clip_sentence_encoder(clip)
        with torch.inference_mode():
            mean_embedding(encode, sentences[:64])  # warm-up: model load, kernels
            start = time.perf_counter()
            mean_embedding(encode, sentences, batch_size=direction_nodes.ENCODE_BATCH)
            batched = time.perf_counter() - start
            start = time.perf_counter()
            for s in sentences[:100]:
                clip.encode_from_tokens(clip.tokenize(s), return_pooled=True)
            single = (time.perf_counter() - start) / 100
        rate = len(sentences) / batched
        print(f"{label:<34} {params / 1e6:>7.1f}M {batched:>10.2f} {rate:>9.0f} {1 / single:>18.0f} "
              f"{2 * len(sentences) / rate:>12.2f}")


if __name__ == "__main__":
    main()
