"""A two-alternative forced-choice (2AFC) study with an Elo leaderboard, as in the user studies of
EditCLIP, LIME and UIP2P (Elo: UIP2P supplement Sec. 3, start 1500, K = 32).

:class:`PairwiseStudy` holds the trials (an input, an instruction, two methods' outputs) and the
votes.  With a Jupyter frontend :meth:`PairwiseStudy.panel` shows an ipywidgets panel that records
clicks into a study of its own; a scripted voter, e.g. :func:`oracle_voter`, casts the votes whose
leaderboard the chapters print (with a frontend or without one: nbval, scripts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import zip_longest

import numpy as np

from ..metrics import elo_leaderboard


@dataclass
class Trial:
    source: np.ndarray
    instruction: str
    outputs: dict  # method name -> image
    context: object = None  # anything a scripted voter needs (e.g. the ToyWorld Edit)


@dataclass
class PairwiseStudy:
    trials: list[Trial]
    seed: int = 0
    votes: list[tuple[str, str, str | None]] = field(default_factory=list)
    human: PairwiseStudy | None = field(default=None, repr=False)  # the frontend panel's own study

    def pairs(self):
        """Every (trial, method A, method B) with A/B order randomised per pair (seeded)."""
        rng = np.random.default_rng(self.seed)
        out = []
        for t in self.trials:
            names = sorted(t.outputs)
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    a, b = (names[i], names[j]) if rng.random() < 0.5 else (names[j], names[i])
                    out.append((t, a, b))
        return out

    def vote(self, a: str, b: str, winner: str | None) -> None:
        if winner not in (a, b, None):
            raise ValueError(f"the winner must be {a!r}, {b!r} or None (tie), got {winner!r}")
        self.votes.append((a, b, winner))

    def run_scripted(self, voter) -> None:
        """Cast every pair's vote with `voter(trial, a, b) -> winner name or None`."""
        for trial, a, b in self.pairs():
            self.vote(a, b, voter(trial, a, b))

    def leaderboard(self):
        return elo_leaderboard(self.votes)

    def leaderboard_text(self) -> str:
        rows = [f"{'method':<16}{'Elo':>8}{'games':>7}"]
        rows += [f"{n:<16}{r:>8.1f}{g:>7d}" for n, r, g in self.leaderboard()]
        return "\n".join(rows)

    def figure(self, n: int = 3, voter=None):
        """`n` pairs as the judge sees them (input, left, right, the instruction above), with the
        vote that `voter` casts under each row: the static picture of the 2AFC panel for places with
        no frontend (tests, `editnb figures`).  The pairs are taken from the trials in turn (the first
        pair of each trial, then the second, ...), so the rows show different inputs whenever there
        are `n` trials.  Casts no vote into the study."""
        import matplotlib.pyplot as plt

        by_trial: dict[int, list] = {}
        for pair in self.pairs():
            by_trial.setdefault(id(pair[0]), []).append(pair)
        rounds = zip_longest(*by_trial.values())  # each trial's first pair, then each one's second, ...
        queue = [pair for row in rounds for pair in row if pair is not None][:n]
        if not queue:
            raise ValueError("the study has no pairs to show: it needs trials with at least two outputs each")
        fig, axes = plt.subplots(len(queue), 3, figsize=(5.4, 2.1 * len(queue)), squeeze=False)
        for row, (t, a, b) in zip(axes, queue):
            for ax, im, title in zip(row, (t.source, t.outputs[a], t.outputs[b]), ("input", "left", "right")):
                ax.imshow(im, interpolation="nearest")
                ax.set_title(title, fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
            row[0].set_ylabel(t.instruction, fontsize=7)
            if voter is not None:
                winner = voter(t, a, b)
                verdict = "tie" if winner is None else ("left is better" if winner == a else "right is better")
                row[1].set_xlabel(f"vote: {verdict}", fontsize=7)
            row[2].set_xlabel(f"(left = {a}, right = {b}: hidden from the judge)", fontsize=6)
        fig.tight_layout()
        return fig

    def panel(self, voter=None):
        """The 2AFC panel.  A scripted `voter` (e.g. :func:`oracle_voter`) casts THIS study's votes and
        its leaderboard is printed, with a frontend or without one, so that the cells after the panel
        read the same numbers in JupyterLab, on Colab and under the tests.  With a frontend, an
        ipywidgets panel ('left is better' / 'tie' / 'right is better') is returned as well: it judges
        the same pairs into a study of its own (``self.human``, with its own board), so that a student's
        clicks never change the scripted numbers."""
        from dataclasses import replace

        from .attention import _frontend_available

        frontend = _frontend_available()
        if voter is None and not frontend:
            raise ValueError("no frontend to click in: pass a scripted voter (e.g. oracle_voter)")
        if voter is not None:
            self.run_scripted(voter)
            print(self.leaderboard_text())
        if not frontend:
            return None
        self.human = replace(self, votes=[], human=None)
        return self.human._widget()

    def _widget(self):
        """The ipywidgets panel that records clicks into this study."""
        import ipywidgets as W
        import matplotlib.pyplot as plt

        queue = self.pairs()
        out, board = W.Output(), W.Output()
        buttons = [W.Button(description=d) for d in ("left is better", "tie", "right is better")]
        state = {"k": 0}

        def show():
            with out:
                out.clear_output(wait=True)
                if state["k"] >= len(queue):
                    print("all pairs judged, thank you")
                    return
                t, a, b = queue[state["k"]]
                fig, axes = plt.subplots(1, 3, figsize=(6, 2.3))
                for ax, im, title in zip(axes, (t.source, t.outputs[a], t.outputs[b]), ("input", "left", "right")):
                    ax.imshow(im, interpolation="nearest")
                    ax.set_title(title, fontsize=8)
                    ax.axis("off")
                fig.suptitle(t.instruction, fontsize=9)
                plt.show()
            with board:
                board.clear_output(wait=True)
                print(self.leaderboard_text())

        def click(choice):
            def handler(_):
                if state["k"] < len(queue):
                    _, a, b = queue[state["k"]]
                    self.vote(a, b, {"left": a, "right": b, "tie": None}[choice])
                    state["k"] += 1
                show()
            return handler

        for btn, choice in zip(buttons, ("left", "tie", "right")):
            btn.on_click(click(choice))
        show()
        return W.VBox([out, W.HBox(buttons), board])


def toy_pie_trials(items, results, methods) -> list[Trial]:
    """Trials from committed toy-pie runs: for each toy-pie item (``editnb.bench.load_pie_bench``),
    the input, the instruction and each method's output read from ``results/METHOD/images``, with
    the ToyWorld Edit the item was made from as context (for :func:`oracle_voter`)."""
    from pathlib import Path

    from PIL import Image

    from ..bench.data import TOY_TYPES
    from ..toy import world

    kinds = {v: k for k, v in TOY_TYPES.items()}
    trials = []
    for it in items:
        e = world.edit_for("test", int(it.id[1:]), kinds[it.editing_type])
        outputs = {}
        for m in methods:
            path = Path(results) / m / "images" / f"{it.id}.png"
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: run `editnb bench run --method {m} --out {Path(results) / m}`")
            with Image.open(path) as im:
                outputs[m] = np.asarray(im.convert("RGB"))
        trials.append(Trial(e.source_image(), e.instruction, outputs, context=e))
    return trials


def oracle_voter(trial: Trial, a: str, b: str):
    """A scripted judge for ToyWorld trials (``trial.context`` is the Edit): prefer the output
    the oracle reads as the target scene; between equals, the one that preserves more outside the
    edit mask (PSNR); a tie within 0.5 dB."""
    from ..toy import oracle

    e = trial.context
    score = {m: (oracle.edit_success(trial.outputs[m], e), min(oracle.preservation(trial.outputs[m], e), 60.0))
             for m in (a, b)}
    if score[a][0] != score[b][0]:
        return a if score[a][0] else b
    if abs(score[a][1] - score[b][1]) < 0.5:
        return None
    return a if score[a][1] > score[b][1] else b
