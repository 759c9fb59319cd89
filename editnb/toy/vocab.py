"""A CLIP tokenizer with a hand-made vocabulary for ToyWorld.

Every word the world uses becomes ONE token (so word i of a prompt is token i + 1, after the start
token), which keeps word-to-token alignment of attention maps trivial.  Unknown words still
tokenize, character by character, as with the real CLIP tokenizer.

The merges are learnt with plain byte-pair encoding over the word list, run until every word is a
single symbol; applying BPE merges in rank order reproduces the learnt segmentation, so each word
ends as one token (checked by :func:`build_tokenizer`).
"""
from __future__ import annotations

import json
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
