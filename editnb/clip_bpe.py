"""The real CLIP tokenizer, built offline from CLIP's byte-pair merges.

Every CLIP text encoder of the ``sd15`` profile (SD 1.5's ViT-L/14, CLIP B/32, CLIPSeg, IP2P)
uses the same tokenizer, and its vocabulary follows from OpenAI's merges file alone: the 256
byte symbols, the same with the end-of-word mark ``</w>``, one entry per merge (in merge order),
then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408 entries.  The merges file ships with
``open-clip-torch`` (MIT licence); a copy lies in ``data/clip-bpe/`` with that licence, because
installing open-clip-torch pulls torchvision, which breaks the pinned CPU torch of the tests.
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from .runtime import data_dir

MERGES_FILE = "clip-bpe/bpe_simple_vocab_16e6.txt.gz"
#: CLIP's vocabulary: 256 bytes, 256 bytes + '</w>', 48,894 merges, 2 special tokens
VOCAB_SIZE = 49408
N_MERGES = VOCAB_SIZE - 2 * 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTEXT = 77


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (CLIP's ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def merges_and_vocab(path: str | None = None) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """CLIP's merges (pairs, in order) and the vocabulary they imply (token -> id)."""
    path = Path(path) if path else data_dir() / MERGES_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"CLIP's BPE merges are missing ({path}); they ship in data/clip-bpe/ of the repository, or take "
            "open_clip/bpe_simple_vocab_16e6.txt.gz out of the open-clip-torch wheel (pip download open-clip-torch "
            "--no-deps) and pass its path")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    # line 0 is the version header; CLIP keeps the first 48,894 merges of the file
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    if len(vocab) != VOCAB_SIZE or len(set(vocab)) != VOCAB_SIZE:
        raise ValueError(f"{path} does not give CLIP's vocabulary ({len(set(vocab))} distinct entries, "
                         f"expected {VOCAB_SIZE}); is it the bpe_simple_vocab_16e6.txt.gz of open-clip-torch?")
    return merges, {tok: i for i, tok in enumerate(vocab)}


def clip_tokenizer(model_max_length: int = CONTEXT):
    """A ``CLIPTokenizer`` with CLIP's real vocabulary and merges (what ``openai/clip-vit-large-patch14``
    and SD 1.5's ``tokenizer/`` hold), padded with ``<|endoftext|>`` to 77 tokens."""
    from transformers import CLIPTokenizer

    merges, vocab = merges_and_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), unk_token=EOS, bos_token=BOS,
                         eos_token=EOS, pad_token=EOS, model_max_length=model_max_length)
