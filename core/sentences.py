"""Built-in sentence sets for pix2pix-zero edit directions (plain Python, no model needed).

pix2pix-zero turns "cat -> dog" into an edit direction by embedding many sentences that contain the source word and
many that contain the target word with the text encoder, and taking the difference of the two mean embeddings. The
quality of that direction depends on the sentences: with a handful of sentences, whatever else they have in common
(a setting, a lighting, a photo style) does not average out and ends up entangled in the direction, so the edit
changes the background or the style along with the subject. The authors used about 1000 varied sentences per word,
generated with GPT-3 / Flan-T5 or from fixed templates.

``generate_sentences`` composes such sentences from several template families (photo and art framings, adjectives,
settings, times of day, camera notes; for a style subject such as "oil pastel": art adjectives, scenes and moods), so
that only the subject is common to all of them. It is deterministic: the same subject, count, seed and kind always
give the same list, in the same order (a private ``random.Random(seed)`` is used, never the global one).

The other helpers read user-supplied sentences (one per line) from a text widget or a UTF-8 file, check them, and
derive a display label from a file name without mangling it (``Path.stem``-style suffix removal, not ``str.strip``).
"""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

__all__ = [
    "KINDS",
    "available_sentence_count",
    "check_sentences",
    "generate_sentences",
    "indefinite_article",
    "parse_sentences",
    "read_sentence_file",
    "sentence_file_label",
    "subject_kind",
]

KINDS = ("auto", "object", "style")

# ---------------------------------------------------------------------------------------------------------------
# Articles

# Words that start with a vowel letter but a consonant sound ("a unicorn", "a one-eyed cat", "a European city").
_CONSONANT_SOUND_PREFIXES = ("uni", "use", "usu", "uti", "ure", "uro", "eu", "ewe", "one", "once", "ubiq", "ufo")
# Words that start with a silent h ("an hour").
_VOWEL_SOUND_PREFIXES = ("hour", "honest", "honor", "honour", "heir")


def indefinite_article(word: str) -> str:
    """"a" or "an" for the phrase starting with ``word`` (a spelling heuristic with the usual exceptions)."""
    w = word.strip().lower()
    if not w:
        raise ValueError("indefinite_article needs a non-empty word")
    if w.startswith(_VOWEL_SOUND_PREFIXES):
        return "an"
    if w.startswith(_CONSONANT_SOUND_PREFIXES):
        return "a"
    if w[0] in "8":  # "an 8-bit ...", "an 80s ..."
        return "an"
    return "an" if w[0] in "aeiou" else "a"


# ---------------------------------------------------------------------------------------------------------------
# Subject kinds

# A subject containing one of these words is read as a style or medium ("oil pastel", "pixel art", "watercolor").
_STYLE_WORDS = frozenset(
    """
    pastel pastels watercolor watercolour watercolors watercolours painting paintings sketch sketches drawing
    drawings illustration illustrations style art artwork anime manga cartoon gouache acrylic impressionist
    impressionism expressionist expressionism cubist cubism surrealist surrealism ukiyo-e lithograph etching
    engraving woodcut linocut mosaic graffiti render rendering fresco tempera pointillism pointillist baroque
    rococo renaissance lowpoly low-poly vaporwave cyberpunk steampunk
    """.split()
)
# A style subject ending in one of these already names the picture ("a watercolor painting of ..."); otherwise a
# noun such as "painting" is added ("an oil pastel drawing of ...").
_PICTURE_NOUNS = frozenset(
    """
    painting drawing sketch illustration artwork render rendering print photograph photo engraving etching
    lithograph woodcut linocut mosaic collage fresco art
    """.split()
)
# Mass nouns: no article ("pixel art of a harbor", not "a pixel art of a harbor").
_MASS_NOUNS = frozenset({"art"})
# Subjects that already start with a determiner are used as they are, without an article or adjective.
_DETERMINERS = frozenset(
    "a an the this that these those my your his her our their its some two three four five several many".split()
)


def _words(subject: str) -> list[str]:
    return subject.lower().replace(",", " ").split()


def subject_kind(subject: str) -> str:
    """"style" when ``subject`` reads as a style or medium ("oil pastel", "pixel art"), else "object"."""
    return "style" if any(w in _STYLE_WORDS for w in _words(subject)) else "object"


# ---------------------------------------------------------------------------------------------------------------
# Template material: object subjects ("cat", "red car", "cat wearing glasses")

_FRAMINGS = (
    "a photo of", "a picture of", "a close-up photo of", "a blurry photo of", "a black and white photo of",
    "a cropped photo of", "a bright photo of", "a dark photo of", "a good photo of", "a painting of",
    "a drawing of", "a sketch of", "a 3D render of", "a snapshot of", "an image of", "a photograph of",
    "a watercolor painting of", "a low-resolution photo of", "a high-resolution photo of", "a professional photo of",
    "a candid photo of", "an old photo of",
)
_OBJECT_ADJECTIVES = (
    "", "small", "large", "beautiful", "colorful", "old", "tiny", "big", "lovely", "strange", "famous", "curious",
    "bright", "dark", "shiny", "dusty", "elegant", "charming", "ordinary", "unusual", "adorable", "weathered",
    "pristine", "quirky",
)
_SETTINGS = (
    "on a wooden table", "in a sunny garden", "on a city street", "next to a window", "in the snow",
    "on the beach", "in a living room", "under a tree", "in front of a brick wall", "on a grassy hill",
    "in the forest", "at the park", "on a sofa", "near a lake", "in a kitchen", "on a rooftop", "in the desert",
    "by the river", "on a snowy mountain", "in a busy market", "in a studio", "on a country road",
    "in an empty room", "on a balcony", "in a field of flowers",
)
_TIMES = (
    "", " at sunset", " at night", " in the morning", " on a rainy day", " in soft light", " under bright sunlight",
    " in winter", " in autumn", " during golden hour",
)
_CAMERA_NOTES = (
    "captured with a DSLR", "shot on film", "photographed from above", "seen from a low angle", "in sharp focus",
    "with a shallow depth of field", "taken with a phone camera", "in high detail",
)

# ---------------------------------------------------------------------------------------------------------------
# Template material: style subjects ("oil pastel", "watercolor painting", "pixel art")

_ART_ADJECTIVES = (
    "", "detailed", "colorful", "loose", "vibrant", "soft", "expressive", "minimalist", "moody", "bright",
    "delicate", "bold", "quick", "careful", "large", "small", "framed", "old", "unfinished", "dreamy",
)
_ADDED_PICTURE_NOUNS = ("painting", "drawing", "sketch", "illustration", "artwork", "study")
_SCENES = (
    "a quiet harbor", "a lighthouse on a cliff", "a bowl of fruit", "a busy city street", "an old farmhouse",
    "a mountain lake", "a sleeping cat", "a vase of flowers", "a woman reading a book", "a forest path",
    "a small fishing village", "a field of sunflowers", "a cozy kitchen", "a sailboat at sea", "a crowded cafe",
    "an old man with a hat", "a country road", "a snowy village", "a castle on a hill", "a river bend",
    "a dog in a park", "a street market", "a pair of shoes", "a city skyline", "a child flying a kite",
    "a stone bridge", "a garden with roses", "a desert canyon", "a train station", "an apple on a plate",
    "a wooden boat", "a wheat field", "a waterfall", "a bicycle against a wall", "a horse in a meadow",
    "a rainy window", "a tea cup", "a busy harbor", "an empty beach", "a mountain cabin",
)
_SCENE_TIMES = (
    "", " at dusk", " at sunrise", " in the rain", " in winter", " under a full moon", " in the fog",
    " on a summer afternoon", " at night", " in autumn", " during a storm", " in the snow", " at noon",
    " in spring", " in golden light", " at twilight",
)
_STYLE_CLAUSES_MEDIUM = (
    "painted in {s}", "drawn in {s}", "rendered in {s}", "in the style of {s}", "done in {s}", "made with {s}",
)
_STYLE_CLAUSES_PICTURE = ("as {a_s}", "in the style of {a_s}", "shown as {a_s}", "depicted as {a_s}")


# ---------------------------------------------------------------------------------------------------------------
# Generation


_S = "\x00"  # placeholder for the subject in cached templates


def _finish(template: str) -> str:
    """Capitalize the first letter (unless the sentence starts with the subject, which stays verbatim), add a period."""
    if not template.startswith(_S):
        template = template[0].upper() + template[1:]
    return template + "."


def _article_phrase(first_word: str, rest: str) -> str:
    return f"{indefinite_article(first_word)} {rest}"


@functools.lru_cache(maxsize=8)
def _object_templates(bare_article: str, has_determiner: bool) -> tuple[str, ...]:
    if has_determiner:
        phrases = [_S]
    else:
        phrases = [f"{_article_phrase(adj, adj + ' ' + _S)}" if adj else f"{bare_article} {_S}"
                   for adj in _OBJECT_ADJECTIVES]
    out = []
    for phrase in phrases:
        for setting in _SETTINGS:
            for time in _TIMES:
                for framing in _FRAMINGS:
                    out.append(f"{framing} {phrase} {setting}{time}")
                for note in _CAMERA_NOTES:
                    out.append(f"{phrase} {setting}{time}, {note}")
                out.append(f"there is {phrase} {setting}{time}")
    if not has_determiner:
        for adj in _OBJECT_ADJECTIVES:
            mine = f"my {adj} {_S}" if adj else f"my {_S}"
            for framing in _FRAMINGS:
                for setting in _SETTINGS:
                    out.append(f"{framing} {mine} {setting}")
    return tuple(_finish(t) for t in out)


@functools.lru_cache(maxsize=16)
def _style_templates(bare_article: str, picture: bool, mass: bool, has_determiner: bool) -> tuple[str, ...]:
    nouns = ("",) if picture else _ADDED_PICTURE_NOUNS
    out = []
    # "an oil pastel painting of ...", "a detailed watercolor painting of ...", "pixel art of ..."
    for adj in ("",) if has_determiner else _ART_ADJECTIVES:
        for noun in nouns:
            core = " ".join(p for p in (adj, _S, noun) if p)
            if (mass and not noun) or has_determiner:
                phrase = core
            elif adj:
                phrase = _article_phrase(adj, core)
            else:
                phrase = f"{bare_article} {core}"
            for scene in _SCENES:
                for time in _SCENE_TIMES:
                    out.append(f"{phrase} of {scene}{time}")
    # "a quiet harbor at dusk, painted in oil pastel", "a waterfall, in the style of a watercolor painting"
    if picture:
        a_s = _S if mass or has_determiner else f"{bare_article} {_S}"
        clauses = [c.format(a_s=a_s) for c in _STYLE_CLAUSES_PICTURE]
    else:
        clauses = [c.format(s=_S) for c in _STYLE_CLAUSES_MEDIUM]
    for scene in _SCENES:
        for time in _SCENE_TIMES:
            for clause in clauses:
                out.append(f"{scene}{time}, {clause}")
    return tuple(_finish(t) for t in out)


def _check_subject(subject) -> str:
    if not isinstance(subject, str):
        raise ValueError(f"subject must be a string, got {type(subject).__name__}")
    s = subject.strip()
    if not s:
        raise ValueError("subject is empty: give the word or phrase the sentences should contain, e.g. 'cat'")
    return s


def _resolve_kind(subject: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return subject_kind(subject) if kind == "auto" else kind


@functools.lru_cache(maxsize=16)
def _pool(subject: str, kind: str) -> tuple[str, ...]:
    words = _words(subject)
    has_determiner = words[0] in _DETERMINERS
    bare_article = indefinite_article(subject)
    if kind == "style":
        templates = _style_templates(bare_article, words[-1] in _PICTURE_NOUNS, words[-1] in _MASS_NOUNS,
                                     has_determiner)
    else:
        templates = _object_templates(bare_article, has_determiner)
    return tuple(dict.fromkeys([t.replace(_S, subject) for t in templates]))


def available_sentence_count(subject: str, kind: str = "auto") -> int:
    """How many distinct sentences ``generate_sentences`` can make for ``subject``."""
    s = _check_subject(subject)
    return len(_pool(s, _resolve_kind(s, kind)))


def generate_sentences(subject: str, count: int = 1000, seed: int = 0, kind: str = "auto") -> list[str]:
    """``count`` distinct English sentences that each contain ``subject`` verbatim (after stripping whitespace).

    kind: "object" ("a photo of a small cat on a wooden table"), "style" ("an oil pastel painting of a quiet harbor
    at dusk") or "auto" (style when the subject contains a word like painting, pastel, watercolor, art, style,
    sketch, anime; else object). A subject that starts with a determiner ("the cat", "two cats") is used as it is,
    with no article or adjective added; give plural subjects that way.
    Deterministic: the same arguments give the same list; another seed gives another selection and order.
    """
    s = _check_subject(subject)
    k = _resolve_kind(s, kind)
    if isinstance(count, bool) or not isinstance(count, int):
        raise ValueError(f"count must be an integer, got {count!r}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    pool = _pool(s, k)
    if count > len(pool):
        raise ValueError(
            f"count={count} is more than the {len(pool)} distinct sentences available for subject {s!r} "
            f"(kind {k!r}); ask for at most {len(pool)}"
        )
    return random.Random(seed).sample(pool, count)


# ---------------------------------------------------------------------------------------------------------------
# User sentences


def parse_sentences(text: str) -> list[str]:
    """One sentence per line: strip whitespace, drop empty lines and '#' comment lines and exact duplicates, keep order."""
    out = []
    seen = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line in seen:
            continue
        seen.add(line)
        out.append(line)
    return out


def read_sentence_file(path) -> list[str]:
    """Sentences from a UTF-8 text file (one per line, same rules as ``parse_sentences``)."""
    p = Path(os.fspath(path))
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"sentence file not found: {str(p)!r}") from None
    return parse_sentences(text)


def sentence_file_label(path) -> str:
    """The file name without a trailing ".txt" (only that suffix, once): "tabby cat.txt" -> "tabby cat"."""
    name = Path(os.fspath(path)).name
    return name.removesuffix(".txt")


def check_sentences(sentences, subject: str | None = None) -> None:
    """ValueError if ``sentences`` is empty, or (with ``subject``) names the first one without it (case-insensitive)."""
    sentences = list(sentences)
    if not sentences:
        raise ValueError("no sentences: at least one is needed (about 1000 varied ones give a clean edit direction)")
    if subject is not None:
        needle = subject.strip().lower()
        if not needle:
            raise ValueError("subject is empty")
        for i, sentence in enumerate(sentences):
            if needle not in sentence.lower():
                raise ValueError(f"sentence {i + 1} does not contain {subject.strip()!r}: {sentence!r}")
