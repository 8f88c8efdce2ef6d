"""A tiny random BLIP captioner in Hugging Face format, built offline for tests (a helper module, not a test file).

`save_tiny_blip(folder)` writes what a real `Salesforce/blip-image-captioning-base` folder holds (config.json,
model.safetensors, tokenizer files, preprocessor_config.json), with the real architecture
(`BlipForConditionalGeneration`) at toy size: hidden 32, 2 layers, 4 heads, 32 px images in 8 px patches. Like the
real model, the decoder's start token [DEC] is outside the tokenizer's vocabulary (bos_token_id = len(vocab)).
Weights are random from a seed, so captions are word salad, but they are deterministic and depend on the image
(seed 1 and init_std 1.0 give different captions for different images).
"""
import os

# Whole words only (no "##" pieces), so decode(prompt + generated) == decode(prompt) + " " + decode(generated).
WORDS = [
    "a", "picture", "of", "photo", "the", "cat", "dog", "horse", "zebra", "sitting", "on", "in", "with", "and",
    "grass", "table", "sofa", "red", "blue", "green", "white", "black", "small", "big", "two", "man", "woman",
    "street", "car", "tree", "sky", "water", "near", "field", "room", "window",
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
IMAGE_SIZE = 32


def tiny_vocab():
    """Token -> id: the BERT special tokens first (ids 0..4), then WORDS."""
    return {tok: i for i, tok in enumerate(SPECIAL + WORDS)}


def save_tiny_blip(folder, seed=1, init_std=1.0):
    """Build the tiny BLIP with weights from `seed` and save_pretrained it (model, tokenizer, image processor) into
    `folder`. `init_std` scales the random init: 1.0 makes the decoder follow the image strongly, so different
    images get different captions. Returns `folder`."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration
    try:
        from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
    except ImportError:  # transformers < 5 (the requirements floor is 4.37.2): one BLIP image processor
        from transformers import BlipImageProcessor as BlipImageProcessorPil

    vocab = tiny_vocab()
    dec_id = len(vocab)  # [DEC]: outside the vocabulary, as in the real checkpoint (30522 with a 30522-word vocab)
    text_config = {
        "vocab_size": len(vocab) + 2, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 64, "bos_token_id": dec_id,
        "sep_token_id": vocab["[SEP]"], "pad_token_id": vocab["[PAD]"], "eos_token_id": vocab["[SEP]"],
        "projection_dim": 32,
    }
    vision_config = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "image_size": IMAGE_SIZE, "patch_size": 8, "projection_dim": 32,
    }
    config = BlipConfig(text_config=text_config, vision_config=vision_config, projection_dim=32,
                        image_text_hidden_size=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim >= 2 or "embedding" in name:
                    p.normal_(0.0, init_std / max(1, p.shape[-1]) ** 0.5)
            # A random decoder favours special tokens, which decode to nothing: make all but [SEP] (the end) unlikely.
            bias = model.text_decoder.cls.predictions.bias
            for token_id in [vocab[t] for t in SPECIAL if t != "[SEP]"] + [dec_id, dec_id + 1]:
                bias[token_id] = -30.0
    model.eval()

    os.makedirs(folder, exist_ok=True)
    try:
        tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)
    except TypeError:  # transformers < 5 reads the vocabulary from a file
        vocab_file = os.path.join(folder, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            f.write("".join(f"{token}\n" for token, _ in sorted(vocab.items(), key=lambda item: item[1])))
        tokenizer = BertTokenizer(vocab_file=vocab_file, do_lower_case=True, model_max_length=512)
    image_processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder
