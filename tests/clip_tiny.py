"""A tiny transformers CLIP text encoder and a character-level CLIP tokenizer, built offline (no vocab download)."""
import inspect
import json
import os
import tempfile

import torch


def _bytes_to_unicode():
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def char_tokenizer(model_max_length: int = 77):
    """A real ``CLIPTokenizer`` whose vocabulary is CLIP's 256 byte characters (with and without the end-of-word
    mark) plus the start/end tokens and no merges: every word becomes its characters, so any text tokenizes."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokens = dict(model_max_length=model_max_length, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    if "vocab_file" not in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers >= 5
        return CLIPTokenizer(vocab=vocab, merges=[], **tokens)
    # transformers 4.x (the requirements' floor) reads the vocabulary and merges from files only
    # (read at construction, so the folder is removed right after)
    with tempfile.TemporaryDirectory(prefix="p2pz-clip-tokenizer-") as folder:
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
        return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), **tokens)


def tiny_text_encoder(vocab_size: int, seed: int = 0, hidden_size: int = 32, layers: int = 2):
    """A ``CLIPTextModel`` (eval, float32) with small random weights, deterministic from ``seed``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                            num_attention_heads=4, num_hidden_layers=layers, max_position_embeddings=77,
                            projection_dim=hidden_size, eos_token_id=vocab_size - 1, bos_token_id=vocab_size - 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(config)
    return model.eval()


def transformers_encoder(tokenizer, text_encoder):
    """``encode(sentences) -> (last hidden state [n, 77, width], pooled [n, width])`` as diffusers tokenizes."""

    @torch.no_grad()
    def encode(sentences):
        ids = tokenizer(list(sentences), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        out = text_encoder(ids)
        return out[0], out[1]

    return encode
