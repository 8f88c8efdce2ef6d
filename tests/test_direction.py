"""Edit directions (core): parity with diffusers' get_embeds/construct_direction, files, the authors' .pt, apply."""
import os
import pickle
import types

import pytest
import torch
from clip_tiny import char_tokenizer, tiny_text_encoder, transformers_encoder
from official_data import official_path
from safetensors.torch import save_file
from tolerances import gamma, unit_roundoff

from core.direction import (
    EditDirection,
    apply_direction,
    apply_pooled_direction,
    build_direction,
    direction_from_word_embeddings,
    encoder_fingerprint,
    load_direction,
    load_word_embedding,
    mean_embedding,
    save_direction,
)
from core.sentences import generate_sentences


@pytest.fixture(scope="module")
def tiny_clip():
    tokenizer = char_tokenizer()
    return tokenizer, tiny_text_encoder(len(tokenizer), seed=0)


def _pipeline_methods():
    from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import (
        StableDiffusionPix2PixZeroPipeline as P,
    )
    return P.get_embeds, P.construct_direction


class _RowByRow:
    """A text encoder that encodes each sentence of a batch alone: its output for a sentence then cannot depend on
    the batch it shares (kernels picked by batch size), so two callers batching differently get the same rows bit for
    bit (tests/tolerances.py, rule 1). float64 would do instead (rule 2), but transformers 4.37 (the requirements'
    floor) cannot build CLIP's causal mask in float64."""

    def __init__(self, encoder):
        self.encoder = encoder

    def __call__(self, input_ids, *args, **kwargs):
        rows = [self.encoder(input_ids[i:i + 1], *args, **kwargs) for i in range(input_ids.shape[0])]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    def __getattr__(self, name):
        return getattr(self.encoder, name)


def test_direction_equals_diffusers_get_embeds_construct_direction(tiny_clip):
    """Both sides read the same rows (_RowByRow); what is left is their own arithmetic on them (below)."""
    tokenizer, text_encoder = tiny_clip[0], _RowByRow(tiny_clip[1])
    get_embeds, construct_direction = _pipeline_methods()
    # diffusers' own methods, run on an object that has just what they use (the real pipeline needs a UNet etc.)
    pipe = types.SimpleNamespace(tokenizer=tokenizer, text_encoder=text_encoder)
    source = generate_sentences("cat", 150, seed=3)
    target = generate_sentences("dog", 130, seed=4)
    expected = construct_direction(pipe, get_embeds(pipe, source), get_embeds(pipe, target))

    # Another batch size than diffusers' 16, on purpose: the mean must not depend on it.
    ours = build_direction(transformers_encoder(tokenizer, text_encoder), "cat", "dog", source, target, batch_size=64)
    assert expected.shape == ours.embedding.shape == (1, 77, 32)
    # Rule 3 (tests/tolerances.py) on the same rows: diffusers' float32 means of n = 150 and 130 rows are within
    # gamma(n) max|row| each; ours are float64 sums rounded once to float32 (u max|row| each); each side's difference
    # adds one rounding (u max|direction|).
    largest = max(float(get_embeds(pipe, sentences).abs().max()) for sentences in (source, target))
    tol = (gamma(150) + gamma(130) + 2 * unit_roundoff()) * largest + 2 * unit_roundoff() * float(expected.abs().max())
    assert torch.allclose(ours.embedding, expected, rtol=0, atol=tol), ((ours.embedding - expected).abs().max(), tol)
    assert (ours.source_count, ours.target_count) == (150, 130)
    # Not normalized (the references do not normalize): a unit-norm result would be a bug.
    assert abs(ours.embedding.norm().item() - 1.0) > 1e-3
    assert ours.pooled is not None and ours.pooled.shape == (1, 32)


def test_mean_embedding_is_independent_of_batch_size(tiny_clip):
    encode = transformers_encoder(*tiny_clip)
    sentences = generate_sentences("oil pastel", 50, seed=1)
    # float32 encoder: its output for a sentence may depend on the batch it shares (kernels picked by batch size), so
    # only the mean's own arithmetic is bounded here, and the encoder is made batch-independent by construction:
    # each sentence is encoded alone and the batches are assembled from those rows (tolerances.py, rule 1).
    rows = {s: tuple(t[0] for t in encode([s])) for s in sentences}

    def encode_rows(chunk):
        return torch.stack([rows[s][0] for s in chunk]), torch.stack([rows[s][1] for s in chunk])

    a, pa = mean_embedding(encode_rows, sentences, batch_size=1)
    b, pb = mean_embedding(encode_rows, sentences, batch_size=50)
    # float64 sums of 50 float32 values in two orders, then one float32 rounding each: at most 1 ulp apart
    tol = 2 * unit_roundoff() * float(a.abs().max()) * 1.01
    assert torch.allclose(a, b, rtol=0, atol=tol) and torch.allclose(pa, pb, rtol=0, atol=tol)
    single = encode(sentences[:1])[0]
    assert torch.equal(mean_embedding(encode, sentences[:1])[0], single.to(torch.float32))


def test_mean_embedding_rejects_bad_input():
    with pytest.raises(ValueError, match="no sentences"):
        mean_embedding(lambda s: (torch.zeros(len(s), 77, 4), None), [])
    with pytest.raises(ValueError, match=r"expected \[sentences, tokens, width\]"):
        mean_embedding(lambda s: (torch.zeros(77, 4), None), ["a cat"])


def _direction(width=768, pooled=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, 77, width, generator=g)
    pool = None if pooled is None else torch.randn(1, pooled, generator=g)
    return EditDirection(embedding=emb, pooled=pool, source="cat", target="dog", source_count=1000,
                         target_count=999, encoder="SD1ClipModel", fingerprint="0123abcd", extra={"note": "x"})


def test_apply_adds_multiplier_times_direction_to_every_chunk():
    d = _direction(width=8)
    cond = torch.randn(2, 154, 8)  # two images, a caption of two 77-token chunks
    out = apply_direction(cond, d, multiplier=0.5)
    assert torch.allclose(out[:, :77], cond[:, :77] + 0.5 * d.embedding)
    assert torch.allclose(out[:, 77:], cond[:, 77:] + 0.5 * d.embedding)
    assert torch.equal(apply_direction(cond, d, 0.0), cond)
    half = apply_direction(cond.half(), d)
    assert half.dtype == torch.float16


def test_apply_refuses_another_width_or_token_count():
    d = _direction(width=768)
    with pytest.raises(ValueError, match=r"768 wide .*SD 1.x.* 1024 wide .*SD 2.x.*build the direction with the CLIP"):
        apply_direction(torch.zeros(1, 77, 1024), d)
    with pytest.raises(ValueError, match="not a multiple"):
        apply_direction(torch.zeros(1, 80, 768), d)
    with pytest.raises(ValueError, match=r"\[batch, tokens, width\]"):
        apply_direction(torch.zeros(77, 768), d)


def test_pooled_direction():
    d = _direction(width=8, pooled=6)
    pooled = torch.randn(1, 6)
    assert torch.allclose(apply_pooled_direction(pooled, d, 2.0), pooled + 2 * d.pooled)
    assert apply_pooled_direction(None, d) is None
    assert apply_pooled_direction(pooled, _direction(width=8)) is pooled  # no pooled part: unchanged
    with pytest.raises(ValueError, match="pooled vector 6 wide"):
        apply_pooled_direction(torch.randn(1, 5), d)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    d = _direction(width=2048, pooled=1280)
    path = save_direction(tmp_path / "cat_to_dog.safetensors", d)
    back = load_direction(path)
    assert torch.equal(back.embedding, d.embedding) and torch.equal(back.pooled, d.pooled)
    for field in ("source", "target", "source_count", "target_count", "encoder", "fingerprint", "origin"):
        assert getattr(back, field) == getattr(d, field), field
    assert dict(back.extra) == {"note": "x"}
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["width"] == "2048" and meta["encoder_kind"].startswith("SDXL")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]  # the atomic write left nothing behind


def test_save_never_replaces_a_file(tmp_path):
    path = tmp_path / "d.safetensors"
    save_direction(path, _direction(width=8, seed=1))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        save_direction(path, _direction(width=8, seed=2))
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_file_gives_a_clear_error(tmp_path, damage):
    path = tmp_path / "d.safetensors"
    save_direction(path, _direction(width=768))
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_direction(path)


def test_foreign_safetensors_is_refused(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_up.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(ValueError, match="not a pix2pix-zero edit direction"):
        load_direction(path)
    with pytest.raises(FileNotFoundError):
        load_direction(tmp_path / "missing.safetensors")


def test_word_embedding_files_load_in_fp32_and_fp16(tmp_path):
    g = torch.Generator().manual_seed(0)
    cat, dog = torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)
    torch.save(cat, tmp_path / "cat.pt")
    torch.save(dog.half(), tmp_path / "dog.pt")
    torch.save(cat[0], tmp_path / "cat77.pt")  # [77, width] is accepted too
    c, dg = load_word_embedding(tmp_path / "cat.pt"), load_word_embedding(tmp_path / "dog.pt")
    assert c.dtype == dg.dtype == torch.float32 and torch.equal(c, cat) and torch.equal(dg, dog.half().float())
    assert torch.equal(load_word_embedding(tmp_path / "cat77.pt"), cat)
    d = direction_from_word_embeddings(c, dg, "cat", "dog")
    # direction = (dog - cat) in float64 rounded once to float32 vs float32 subtraction (also one rounding): equal
    assert torch.equal(d.embedding, dg - c) and d.width == 768


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_word_embedding_loader_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="weights_only=True") as refused:
        load_word_embedding(path)
    message = str(refused.value)
    # our own words: refused on purpose, what a proper file is; never PyTorch's advice to turn the safety off
    assert "refused on purpose" in message and "plain tensors" in message and "torch.save(" in message
    assert "weights_only=False" not in message and "Re-running" not in message and "pwned" not in message
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="could not be read as a torch-saved tensor file") as corrupt:
        load_word_embedding(tmp_path / "truncated.pt")
    assert "weights_only=False" not in str(corrupt.value)
    torch.save({"a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="not a word embedding"):
        load_word_embedding(tmp_path / "two.pt")


def test_authors_cat_dog_and_fp16_horse_zebra():
    embeddings = official_path("embeddings_sd_1.4")
    cat, dog = (load_word_embedding(os.path.join(embeddings, f"{w}.pt")) for w in ("cat", "dog"))
    d = direction_from_word_embeddings(cat, dog, "cat", "dog")
    assert d.embedding.shape == (1, 77, 768) and d.embedding.dtype == torch.float32
    caption = torch.randn(1, 77, 768)
    # two float32 roundings on each side (add, subtract; dog - cat): 4 u32 of |caption| + |dog - cat| (rule 3)
    tol = 4 * unit_roundoff() * float(caption.abs().max() + (dog - cat).abs().max())
    assert torch.allclose(apply_direction(caption, d) - caption, dog - cat, rtol=0, atol=tol)
    with pytest.raises(ValueError, match="768 wide"):
        apply_direction(torch.randn(1, 77, 1024), d)
    horse, zebra = (load_word_embedding(os.path.join(embeddings, f"{w}.pt")) for w in ("horse", "zebra"))
    assert horse.dtype == torch.float32 and horse.shape == (1, 77, 768)
    assert direction_from_word_embeddings(horse, zebra, "horse", "zebra").embedding.abs().sum() > 0


def test_fingerprint_tells_weights_apart():
    a = tiny_text_encoder(100, seed=0).state_dict()
    b = tiny_text_encoder(100, seed=1).state_dict()
    assert encoder_fingerprint(a) == encoder_fingerprint({k: v.clone() for k, v in a.items()})
    assert encoder_fingerprint(a) != encoder_fingerprint(b)
    c = {k: v.clone() for k, v in a.items()}
    next(iter(c.values())).view(-1)[0] += 1.0  # one sampled value (index 0 always is) changes the id
    assert encoder_fingerprint(a) != encoder_fingerprint(c)


def test_direction_shape_is_checked():
    with pytest.raises(ValueError, match=r"\[1, tokens, width\]"):
        EditDirection(embedding=torch.zeros(2, 77, 8))


def test_full_size_sd3_and_flux_conditionings_are_told_apart():
    """SD 3.x and Flux conditionings are both 4096 wide; the pooled width (2048 vs 768) tells them apart."""
    from core.direction import check_conditioning

    d = EditDirection(embedding=torch.zeros(1, 154, 4096), pooled=torch.zeros(1, 2048), source="cat", target="dog",
                      family="sd3", segments=(77, 77))
    check_conditioning(d, 4096, 2048)
    with pytest.raises(ValueError, match=r"SD 3.x .*pooled 2048.* \(from Flux .*pooled 768\)"):
        check_conditioning(d, 4096, 768)
