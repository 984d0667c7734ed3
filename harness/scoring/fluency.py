"""The fluency scorer: does the reply read as language, or as words in no order?

A tiny fine-tune can write incoherent Vietnamese ("Mình rất tiếc vào mục mục đơn, ...") that passes every
rule-based tone check. This scorer asks a fixed scoring model how much the reply's word order matters:

    coherence = lp(reply) - mean over k word-order shuffles of lp(shuffled reply)

where lp is the mean log-probability of the reply's tokens after "Customer: <prompt>\\nSupport: ". A fluent
reply is far likelier than its shuffles (support_vi's references: median about 0.6); scrambled text is about
as likely as its own shuffles (median about 0). A looped reply keeps its word order too, so it passes here:
loops are the degeneration scorer's job. Shuffles are seeded from the text, so a reply always gets the same
score; the k + 1 sequences (context + text each) go through the model in one right-padded forward,
on CPU in float32 wherever the harness runs, so a threshold calibrated on one machine holds on another.

The model loads once per process, from local files only (never the network). torch and transformers are
imported when a fluency scorer is built, not when the registry imports this module.
"""

from __future__ import annotations

import functools
import hashlib
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import HarnessInputError, Problem
from harness.scoring.extract import Extraction
from harness.scoring.score import Score
from harness.scoring.spec import MetricSpec, ScoreFn, ScorerSpec, ScoringContext
from harness.scoring.tone import NO_ANSWER, answer_text
from harness.suite.suite import FLUENCY_DEFAULTS, SUITE_FILE

if TYPE_CHECKING:
    from harness.suite.suite import Case, Suite

METRIC = "fluency"
MIN_WORDS = 4  # fewer words have too few orders for a shuffle to say anything
CALIBRATION_SALT = "fluency-calibration"  # scrambled references use other shuffles than the scorer's own
REFERENCE_PASS_MIN = 0.95  # calibration: at least this share of references must pass
SCRAMBLED_PASS_MAX = 0.05  # ... and at most this share of scrambled references

# (context, texts) -> the mean log-probability of each text's tokens after the context
LogProbFn = Callable[[str, Sequence[str]], list[float]]


@dataclass(frozen=True)
class Coherence:
    """How much likelier the reply is than its shuffles, in nats per token."""

    coherence: float
    lp: float
    lp_shuffled: float


@dataclass(frozen=True)
class ScoringModel:
    """A loaded scoring model: its log-prob function and the identity recorded with every score."""

    logprob: LogProbFn
    identity: dict[str, Any]


# --- the measurement -------------------------------------------------------------------------------------


def context_for(case: Case) -> str:
    return "Customer: " + case.user_text() + "\nSupport: "


def _seed(text: str, salt: str = "") -> int:
    """A seed stable across processes and machines (hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256((salt + "\0" + text).encode("utf-8")).digest()[:8], "big")


def shuffles(text: str, k: int, salt: str = "") -> list[str]:
    """k word-order shuffles of text, seeded from the text itself, so the same text always gets the same ones."""
    rng = random.Random(_seed(text, salt))
    words = text.split()
    out = []
    for _ in range(k):
        order = list(words)
        rng.shuffle(order)
        out.append(" ".join(order))
    return out


def coherence(text: str, context: str, logprob: LogProbFn, k: int = 2) -> Coherence:
    """lp(text) minus the mean lp of k shuffles of it, all k + 1 in one call of logprob."""
    lps = logprob(context, [text, *shuffles(text, k)])
    lp_shuffled = statistics.fmean(lps[1:])
    return Coherence(lps[0] - lp_shuffled, lps[0], lp_shuffled)


def _torch_logprob(tokenizer: Any, model: Any) -> LogProbFn:
    """Context + text for each of the k + 1 texts, right-padded into one forward; only real text tokens count.
    (Sharing the context's KV cache across the texts computed the same numbers but ran 10x slower on CPU.)"""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def logprob(context: str, texts: Sequence[str]) -> list[float]:
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        parts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(ctx) + len(p) for p in parts)
        ids = torch.full((len(parts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(parts), width), dtype=torch.long)
        for i, p in enumerate(parts):  # right padding: a real token never attends to a pad after it
            ids[i, : len(ctx) + len(p)] = torch.tensor(ctx + p, dtype=torch.long)
            mask[i, : len(ctx) + len(p)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        out = []
        for i, p in enumerate(parts):
            start = max(len(ctx), 1)  # the first token has no prediction without a context
            if len(ctx) + len(p) <= start:
                out.append(0.0)
                continue
            rows = logits[i, start - 1 : len(ctx) + len(p) - 1].float()
            targets = ids[i, start : len(ctx) + len(p)]
            token_lp = rows.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(rows, dim=-1)
            out.append(float(token_lp.mean()))
        return out

    return logprob


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[Any, Any]:
    """The tokenizer and model of a resolved folder, once per process: every run scores many variants."""
    import torch

    from harness.engine.loading import Runtime, load_model, load_tokenizer
    from harness.models.embedded import ModelRef

    ref = ModelRef(path, Path(path), {})
    model = load_model(ref, Runtime("cpu", torch.float32)).eval()
    return load_tokenizer(ref), model


def resolve_scoring_model(spec: str, root: Path, where: str = "fluency: key 'model'") -> tuple[Path, dict[str, Any]]:
    """The folder of the `model` setting and its identity; never downloads (an unpulled embedded model is an
    input error) and a relative folder is relative to the suite folder."""
    from harness.models.embedded import EMBEDDED, embedded_dir

    if spec in EMBEDDED:
        folder = embedded_dir(spec)
        if not (folder / "provenance.json").is_file():
            raise HarnessInputError(
                Problem(
                    where,
                    f"the embedded scoring model {spec!r} is not provisioned yet (nothing at {folder})",
                    f"run `harness models pull {spec}` once; the fluency scorer never downloads",
                )
            )
        import json

        provenance = json.loads((folder / "provenance.json").read_text(encoding="utf-8"))
        return folder, {"name": spec, "path": str(folder), "gguf_sha256": provenance.get("gguf_sha256")}
    folder = Path(spec).expanduser()
    folder = folder if folder.is_absolute() else root / folder
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise HarnessInputError(
            Problem(
                where,
                f"{spec!r} is neither an embedded model ({', '.join(EMBEDDED)}) nor a model folder "
                f"(looked for config.json and *.safetensors in {folder})",
                "name an embedded model, or a local folder (relative to the suite folder or absolute)",
            )
        )
    return folder.resolve(), {"name": spec, "path": str(folder.resolve())}


def load_scoring_model(spec: str, root: Path) -> ScoringModel:
    """Resolve and load the scoring model (cached per folder for the process)."""
    folder, identity = resolve_scoring_model(spec, root)
    tokenizer, model = _load(str(folder))
    return ScoringModel(_torch_logprob(tokenizer, model), identity)


# --- the scorer ------------------------------------------------------------------------------------------


def settings_of(suite: Suite) -> dict[str, Any]:
    """The suite's validated fluency block, or the defaults when a suite is built in code without one."""
    return {**FLUENCY_DEFAULTS, **(suite.fluency or {})}


# (scoring model, shuffles) -> (context, reply) -> coherence, for this process: scorers are built per variant,
# and a merged export repeats its adapter's replies, so each reply is measured once per run.
_MEASURED: dict[tuple[str, int], dict[tuple[str, str], Coherence]] = {}


def fluency_scorer(settings: Mapping[str, Any], scoring: ScoringModel) -> ScoreFn:
    """Score each reply's word-order coherence as `fluency`; pass at min_coherence or above."""
    field, k = str(settings["field"]), int(settings["shuffles"])
    threshold = float(settings["min_coherence"])
    measured = _MEASURED.setdefault((repr(sorted(scoring.identity.items())), k), {})

    def score(output: str, ext: Extraction, case: Case, suite: Suite) -> list[Score]:
        answer = answer_text(ext.obj, field)
        if answer is None:
            return [Score(METRIC, None, NO_ANSWER)]
        n_words = len(answer.split())
        if n_words < MIN_WORDS:
            why = f"reply has {n_words} word(s) in {field!r}; word order says nothing under {MIN_WORDS} words"
            return [Score(METRIC, None, f"unscored: {why}", {"words": n_words, "model": scoring.identity})]
        context = context_for(case)
        c = measured.get((context, answer))
        if c is None:  # a merged export repeats its adapter's replies: each (prompt, reply) is measured once
            c = measured[(context, answer)] = coherence(answer, context, scoring.logprob, k)
        details = {
            "coherence": round(c.coherence, 6),
            "lp": round(c.lp, 6),
            "lp_shuffled": round(c.lp_shuffled, 6),
            "min_coherence": threshold,
            "shuffles": k,
            "model": scoring.identity,
        }
        if c.coherence >= threshold:
            why = (
                f"word order matters to the scoring model: coherence {c.coherence:.2f} >= {threshold:.2f} "
                f"(lp {c.lp:.2f} vs {c.lp_shuffled:.2f} shuffled)"
            )
            return [Score(METRIC, 1.0, why, details)]
        why = (
            f"word order barely matters to the scoring model: coherence {c.coherence:.2f} < {threshold:.2f} "
            f"(reply reads as scrambled; lp {c.lp:.2f} vs {c.lp_shuffled:.2f} shuffled)"
        )
        return [Score(METRIC, 0.0, why, details)]

    return score


def _factory(suite: Suite, context: ScoringContext) -> ScoreFn:
    settings = settings_of(suite)
    where = f"{suite.path / SUITE_FILE}: key 'fluency.model'"
    folder, identity = resolve_scoring_model(str(settings["model"]), suite.path, where)
    tokenizer, model = _load(str(folder))
    return fluency_scorer(settings, ScoringModel(_torch_logprob(tokenizer, model), identity))


SPEC = ScorerSpec(
    name="fluency",
    version="1",
    description="word-order coherence of the reply under a fixed scoring model: scrambled text cannot pass",
    factory=_factory,
    metrics=(
        MetricSpec(
            METRIC,
            True,
            "mean",
            "share of replies (4+ words) that the scoring model finds likelier than their word shuffles "
            "by at least min_coherence nats per token",
            headline=True,
            flips=True,
        ),
    ),
)


# --- calibration: `harness check SUITE --fluency` ----------------------------------------------------------


def _quantile(values: Sequence[float], q: float) -> float:
    return float(np.quantile(values, q))  # linear interpolation between the closest ranks


@dataclass(frozen=True)
class Calibration:
    """Coherence of the suite's references and of a scrambled copy of each, at the configured threshold."""

    min_coherence: float
    model: dict[str, Any]
    references: tuple[float, ...]
    scrambled: tuple[float, ...]
    skipped: int  # cases without a reference reply of MIN_WORDS words or more
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.references)

    def share(self, values: Sequence[float]) -> float:
        return sum(1 for v in values if v >= self.min_coherence) / len(values) if values else 0.0

    @property
    def suggested(self) -> float:
        """Midway between the references' 5th percentile and the scrambled copies' 95th."""
        return (_quantile(self.references, 0.05) + _quantile(self.scrambled, 0.95)) / 2

    @property
    def separates(self) -> bool:
        return (
            self.n > 0
            and self.share(self.references) >= REFERENCE_PASS_MIN
            and self.share(self.scrambled) <= SCRAMBLED_PASS_MAX
        )

    def render(self) -> str:
        if not self.n:
            return "fluency: no case has a reference reply of 4+ words to calibrate on"

        def row(name: str, v: Sequence[float]) -> str:
            return (
                f"  {name:<10} median {statistics.median(v):6.3f}  p5 {_quantile(v, 0.05):6.3f}  "
                f"p95 {_quantile(v, 0.95):6.3f}  min {min(v):6.3f}  max {max(v):6.3f}  "
                f"pass at {self.min_coherence:g}: {self.share(v):6.1%}"
            )

        verdict = (
            "ok: the threshold separates references from scrambled text"
            if self.separates
            else (
                f"FAIL: the threshold does not separate (need >= {REFERENCE_PASS_MIN:.0%} of references and "
                f"<= {SCRAMBLED_PASS_MAX:.0%} of scrambled to pass); set fluency.min_coherence from the suggestion "
                "or use another scoring model"
            )
        )
        return "\n".join(
            [
                f"fluency calibration: {self.n} references (skipped {self.skipped}), model {self.model.get('name')}, "
                f"min_coherence {self.min_coherence:g}, {self.seconds:.1f}s",
                row("references", self.references),
                row("scrambled", self.scrambled),
                f"  suggested min_coherence {self.suggested:.2f} (midway between references p5 and scrambled p95)",
                verdict,
            ]
        )


def calibrate(suite: Suite, scoring: ScoringModel | None = None) -> Calibration:
    """Coherence of every reference reply and of one scrambled copy of each (shuffled with another seed than
    the scorer's own shuffles, so a copy is never compared with itself)."""
    import time

    settings = settings_of(suite)
    if scoring is None:
        scoring = load_scoring_model(str(settings["model"]), suite.path)
    field, k = str(settings["field"]), int(settings["shuffles"])
    refs: list[float] = []
    scrambled: list[float] = []
    skipped = 0
    start = time.perf_counter()
    for case in suite.cases:
        text = case.reference.get(field) if case.reference else None
        if not isinstance(text, str) or len(text.split()) < MIN_WORDS:
            skipped += 1
            continue
        ctx = context_for(case)
        refs.append(coherence(text, ctx, scoring.logprob, k).coherence)
        scrambled.append(coherence(shuffles(text, 1, CALIBRATION_SALT)[0], ctx, scoring.logprob, k).coherence)
    return Calibration(
        float(settings["min_coherence"]),
        scoring.identity,
        tuple(refs),
        tuple(scrambled),
        skipped,
        time.perf_counter() - start,
    )
