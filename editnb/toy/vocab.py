"""A CLIP tokenizer with a hand-made vocabulary for ToyWorld.

Every word the world uses becomes ONE token (so word i of a prompt is token i + 1, after the start
token), which keeps word-to-token alignment of attention maps trivial.  Unknown words still
tokenize, character by character, as with the real CLIP tokenizer, but the toy models never saw
them: the tokenizers that :func:`editnb.models.load` gives on the toy profile (:func:`guard`) warn
once per unknown word, and refuse characters outside :data:`CHARS`, which the vocabulary lacks and
would encode as the end-of-text token, cutting the prompt short without a word.

The merges are learnt with plain byte-pair encoding over the word list, run until every word is a
single symbol; applying BPE merges in rank order reproduces the learnt segmentation, so each word
ends as one token (checked by :func:`build_tokenizer`).
"""
from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path

from .world import BACKGROUNDS, COLORS, COLS, ROWS, SHAPES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 32

# Words of captions and instructions, plus a few general ones so that hand-written prompts in the
# chapters ("a photo of ...") stay one token per word.
WORDS = sorted(set(
    list(COLORS) + list(BACKGROUNDS) + list(SHAPES) + list(ROWS) + list(COLS)
    + """a an the and on of in at to into back again with background make turn add remove move
    change put paint replace colour color shape object objects scene image picture photo small large
    big it its is nothing empty new old instead there this that orange pink brown cyan star heart
    hexagon dog cat""".split()
))
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE over `words` (each counted once) until every word is a single symbol."""
    corpus = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges = []
    while True:
        pairs = Counter()
        for symbols in corpus.values():
            pairs.update(zip(symbols, symbols[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties broken by name
        merges.append(best)
        for w, symbols in corpus.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            corpus[w] = tuple(out)


def write_tokenizer_files(folder: str | Path) -> Path:
    """Write vocab.json, merges.txt and the configs that `CLIPTokenizer.from_pretrained` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(WORDS)
    tokens = [BOS, EOS]
    tokens += list(CHARS) + [c + "</w>" for c in CHARS]
    tokens += ["".join(m) for m in merges]
    vocab = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,  # as in Stable Diffusion 1.5
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2))
    return folder


def build_tokenizer(folder: str | Path):
    """Write the files and load them back with `CLIPTokenizer`, checking one token per word."""
    from transformers import CLIPTokenizer

    write_tokenizer_files(folder)
    tok = CLIPTokenizer.from_pretrained(str(folder))
    for w in WORDS:
        ids = tok(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"toy tokenizer splits {w!r} into {len(ids)} tokens; the merges are wrong")
    return tok


_WARNED: set[str] = set()
_SPECIAL = re.compile(re.escape(BOS) + "|" + re.escape(EOS))


def unknown(text: str) -> tuple[list[str], list[str]]:
    """(words outside :data:`WORDS`, characters outside :data:`CHARS`) of a prompt, as the
    tokenizer sees it (lower case, special tokens left out)."""
    text = _SPECIAL.sub(" ", text.lower())
    chars = sorted({c for c in text if not c.isspace() and c not in CHARS})
    words = [w for w in dict.fromkeys(re.findall(r"[a-z]+", text)) if w not in WORDS]
    return words, chars


def check_text(text) -> None:
    """Refuse characters the toy vocabulary lacks; warn (once per word) about unknown words."""
    for t in [text] if isinstance(text, str) else text if isinstance(text, (list, tuple)) else []:
        if not isinstance(t, str):
            continue
        words, chars = unknown(t)
        if chars:
            raise ValueError(f"the prompt {t!r} has characters the toy tokenizer lacks: {chars}. It knows only "
                             f"{CHARS!r} and spaces; without this check they would end the prompt there. Remove "
                             "them, or use the sd15 profile")
        new = [w for w in words if w not in _WARNED]
        if new:
            _WARNED.update(new)
            warnings.warn(f"the toy models never saw the words {new} (in {t!r}); they are spelled letter by letter "
                          "and carry no meaning. The toy world's words are editnb.toy.vocab.WORDS", stacklevel=4)


_GUARDED: dict[type, type] = {}


def _guarded_class(base: type) -> type:
    if base not in _GUARDED:
        def tokenize(self, text, *args, **kwargs):
            check_text(text)
            return base.tokenize(self, text, *args, **kwargs)

        def _encode_plus(self, text, *args, **kwargs):
            check_text(text)
            return base._encode_plus(self, text, *args, **kwargs)

        def save_pretrained(self, *args, **kwargs):
            # saved folders name the plain class, so they load anywhere without editnb
            self.__class__ = base
            try:
                return base.save_pretrained(self, *args, **kwargs)
            finally:
                self.__class__ = _GUARDED[base]

        _GUARDED[base] = type("Toy" + base.__name__, (base,), {
            "tokenize": tokenize, "_encode_plus": _encode_plus, "save_pretrained": save_pretrained,
            "__module__": __name__, "__doc__": "A toy-vocabulary tokenizer that checks its input."})
    return _GUARDED[base]


def __getattr__(name: str):
    # lets pickle find the guarded class by name (editnb.toy.vocab.ToyCLIPTokenizer)
    if name == "ToyCLIPTokenizer":
        from transformers import CLIPTokenizer

        return _guarded_class(CLIPTokenizer)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def guard(model):
    """The tokenizer(s) of a loaded toy model (a pipeline, or a (model, processor) pair) made to
    check their prompts (:func:`check_text`); returns `model`."""
    holders = list(model) if isinstance(model, tuple) else [model]
    for holder in holders:
        tok = getattr(holder, "tokenizer", None)
        if tok is not None and type(tok) not in _GUARDED.values():
            tok.__class__ = _guarded_class(type(tok))
    return model
