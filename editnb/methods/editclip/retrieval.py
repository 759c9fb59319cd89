"""Zero-shot pair retrieval (supplement Sec. D, Table 2): query with an (input, edited) pair, rank
every other pair by the similarity of their edit embeddings; a pair is relevant when it shows the
same edit (the same instruction).  Baselines as the paper's: CLIP (the edited image's embedding)
and CLIP-Dir (the direction F(I_e) - F(I_i) between the two images' embeddings)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ... import metrics as M

PAPER_TABLE_2 = {  # supplement Table 2 (IP2P dataset)
    "CLIP": {"AUC": 0.140, "MAP@10": 0.104, "Recall@10": 0.223, "Precision@10": 0.036},
    "CLIP-Dir": {"AUC": 0.095, "MAP@10": 0.069, "Recall@10": 0.182, "Precision@10": 0.035},
    "EditCLIP": {"AUC": 0.201, "MAP@10": 0.160, "Recall@10": 0.349, "Precision@10": 0.081},
}


def pair_embeddings(encoder, features, inputs, edited, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Unit-norm embeddings of each pair for the three rankers: EditCLIP E(I_i, I_e), CLIP F(I_e),
    CLIP-Dir F(I_e) - F(I_i)."""
    chunks = lambda xs: [xs[k:k + batch_size] for k in range(0, len(xs), batch_size)]  # noqa: E731
    e = torch.cat([encoder.embed(a, b) for a, b in zip(chunks(list(inputs)), chunks(list(edited)))])
    f_in = torch.cat([features.images(a) for a in chunks(list(inputs))])
    f_ed = torch.cat([features.images(b) for b in chunks(list(edited))])
    return {"CLIP": f_ed, "CLIP-Dir": F.normalize(f_ed - f_in, dim=-1), "EditCLIP": F.normalize(e, dim=-1)}


def leave_one_out(similarity: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) query x gallery matrices without each query's own pair: (n, n - 1)."""
    keep = ~np.eye(len(similarity), dtype=bool)
    n = len(similarity)
    return similarity[keep].reshape(n, n - 1), relevant[keep].reshape(n, n - 1)


def retrieval_table(embeddings: dict[str, torch.Tensor], labels, k: int = 10) -> dict[str, dict[str, float]]:
    """Table 2's columns (AUC, MAP@k, Recall@k, Precision@k) per ranker; relevant = same label."""
    labels = np.asarray(labels)
    relevant = labels[:, None] == labels[None, :]
    out = {}
    for name, emb in embeddings.items():
        sim = (emb @ emb.T).cpu().numpy()
        out[name] = M.retrieval_metrics(*leave_one_out(sim, relevant), k=k)
    return out


def toy_retrieval(encoder, features, groups: int = 40, per_group: int = 5, k: int = 10) -> dict:
    """Table 2 on held-out ToyWorld pairs: `groups` instructions, each on `per_group` scenes."""
    from .data import retrieval_set

    edits, labels = retrieval_set(groups, per_group)
    emb = pair_embeddings(encoder, features, [e.source_image() for e in edits], [e.edited_image() for e in edits])
    return {"table": retrieval_table(emb, labels, k), "embeddings": emb, "labels": labels, "edits": edits}
