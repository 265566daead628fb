"""Lab 04 study: find where a fact lives, rewrite only that, and measure what the rewrite and many rewrites forget.

1. ``trace_relations``: average causal traces (Meng et al. 2022, arXiv:2202.05262, sec. 2) of MLP states for each
   relation of the world, and of residual and attention states for the edited one; ``edit_site`` reads the early
   layer whose MLP output at the subject's last token carries the fact.
2. ``compare_editors``: ≥ 20 independent counterfactual edits, each applied to the unedited model, scored and undone,
   by ROME (sec. 3), FT-L (the same layer, fine-tuned inside an L∞ ball) and IKE (the new fact in the prompt,
   arXiv:2305.12740), on CounterFact's scores (efficacy, paraphrase, neighbourhood, other attributes, portability,
   fluency).
3. ``sequential_editing``: ROME edits applied one after another to the same model, each computed on the already
   edited one (Gupta et al. 2024, arXiv:2401.07453), with the earlier edits' retention, the neighbourhood and the
   old skills measured after 1, 2, 4, ... edits.

``summarize`` writes ``results/04.json``. Tiny: ``tiny-chat``, job facts of the people it knows. Colab: GPT-2 XL
(fp16) on CounterFact records, with the reference code's hyper-parameters and a wikitext key covariance.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from tqdm.auto import tqdm

from ..core.budget import GPT2_XL, LabBudget, TrainingRun
from ..core.edits import EditCase
from ..core.evaluate import accuracy, per_sample_correct
from ..core.forgetting import take_snapshot
from ..core.models import load_model
from ..core.profiles import Profile, run_environment, seed_everything
from ..methods.editing import (
    TOKEN_ROLES,
    RomeConfig,
    RomeEdit,
    average_trace,
    context_prefixes,
    continue_text,
    encode,
    fact_scores,
    finetune_layer_edit,
    greedy_next_word,
    in_context_prompt,
    key_covariance,
    n_gram_entropy,
    prefers,
    rome_edit,
    rome_update,
    subject_positions,
    target_logprobs,
    undo_edit,
)
from ..world.benchmarks import forgetting_benchmark
from ..world.hub import Loader, load_counterfact, load_wikitext
from ..world.tiny import RELATIONS, Person, World, restate_prompt, statement_prompt

EDITORS = ("ROME", "FT-L", "IKE")
# The paper's running example (arXiv:2202.05262, fig. 1), traced first on colab.
SPACE_NEEDLE = ("The Space Needle is located in the city of", "Seattle", "The Space Needle")
Update = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Plan:
    """A Lab 04 run: the model, the edited relation and layer, ROME's and FT-L's settings, how many independent and
    sequential edits, and the data of the key covariance and the context prefixes."""

    model: str
    relation: str
    rome: RomeConfig
    ftl_steps: int
    ftl_lr: float
    ftl_linf: float
    n_edits: int = 20
    n_sequential: int = 64
    n_trace_prompts: int = 24
    trace_window: int = 1  # layers restored around each MLP / attention state (the paper: 10 of GPT-2 XL's 48)
    trace_min_drop: float = 0.5  # a traced prompt must lose this much of its answer's probability under corruption
    n_prefixes: int = 5
    prefix_length: int = 10
    covariance_texts: int = 2000
    fluency_tokens: int = 20
    n_per_skill: int = 40  # old-skill items per skill for the sequential-editing snapshots (tiny)

    def checkpoints(self) -> list[int]:
        """1, 2, 4, ... up to ``n_sequential`` (always included): where the sequential curve is measured."""
        points = [1]
        while points[-1] * 2 < self.n_sequential:
            points.append(points[-1] * 2)
        return [*points, self.n_sequential]


PLANS = {
    # Chosen on the 20 development people (``split_people``), never on the evaluated ones: see docs/labs/04.
    "tiny": Plan(
        "tiny-chat",
        "job",
        RomeConfig(layer=0, steps=50, lr=0.5, kl_factor=1.0),
        ftl_steps=25,
        ftl_lr=5e-4,
        ftl_linf=2e-2,
    ),
    # The reference code's GPT-2 XL hyper-parameters (kmeng01/rome hparams/ROME/gpt2-xl.json, FT-L's ft/gpt2-xl):
    # layer 17, 20 steps at lr 0.5, KL 0.0625, weight decay 0.5, clamp 4. Prefixes: 10 of 10 tokens (the reference
    # samples 10 of 5 and 10 of 10); C from 2 000 WikiText paragraphs (the reference: 100 000 Wikipedia samples).
    "colab": Plan(
        "gpt2-xl",
        "counterfact",
        RomeConfig(layer=17, kl_prompts=("{} is a",)),
        ftl_steps=25,
        ftl_lr=5e-4,
        ftl_linf=5e-4,
        n_edits=50,
        n_sequential=64,
        n_trace_prompts=20,
        trace_window=10,
        trace_min_drop=0.1,  # GPT-2 XL is less sure of its facts: keep a record whose answer falls by 0.1 or more
        n_prefixes=10,
        covariance_texts=2000,
        fluency_tokens=50,
    ),
}


# ----------------------------------------------------------------------------------------- the edit set
def known(model, tokenizer, world: World, relation: str) -> list[Person]:
    """The world's people whose fact of ``relation`` the model completes itself: greedy next word after the
    request prompt ("ada stone works as a") is the true value. Only a known fact can be located and rewritten."""
    prompts = [statement_prompt(relation, 1).format(p.name) for p in world.people]
    words = greedy_next_word(model, tokenizer, prompts)
    return [p for p, word in zip(world.people, words, strict=True) if word == p.value(relation)]


def split_people(people: Sequence[Person], n_dev: int = 20) -> tuple[list[Person], list[Person]]:
    """(development, evaluation): the last ``n_dev`` known people are where the plan's settings were chosen; the
    lab's edits are drawn from the others only."""
    return list(people[-n_dev:]), list(people[:-n_dev])


def tiny_cases(model, tokenizer, plan: Plan, seed: int) -> tuple[list[EditCase], list[EditCase], list[EditCase]]:
    """(independent, sequential, held) edit cases of the tiny world for ``seed``: distinct known people of the
    evaluation split (``plan.n_edits`` edited one at a time, ``n_sequential`` one after another, ``n_edits`` never
    edited whose facts the sequential curve watches); neighbours are drawn from every known person."""
    world = World()
    people = known(model, tokenizer, world, plan.relation)
    _, evaluation = split_people(people)
    needed = plan.n_sequential + plan.n_edits
    if len(evaluation) < needed:
        raise ValueError(f"the model knows {len(evaluation)} evaluation people but the plan needs {needed}")
    chosen = random.Random(seed).sample(evaluation, needed)
    cases = world.edit_cases(chosen, plan.relation, people, seed)
    return cases[: plan.n_edits], cases[: plan.n_sequential], cases[plan.n_sequential :]


def edit_cases(profile: Profile, model, tokenizer, plan: Plan, seed: int, loader: Loader | None = None):
    """The profile's (independent, sequential, held) edit cases: the tiny world's, or CounterFact records on colab."""
    if profile.name == "tiny":
        return tiny_cases(model, tokenizer, plan, seed)
    cases = load_counterfact(plan.n_sequential + plan.n_edits, seed, loader)
    return cases[: plan.n_edits], cases[: plan.n_sequential], cases[plan.n_sequential :]


def covariance_texts(profile: Profile, plan: Plan, seed: int, loader: Loader | None = None) -> list[str]:
    """Text the key covariance C = E[k kᵀ] is estimated on: the model's own pre-training corpus (tiny) or wikitext."""
    if profile.name == "tiny":
        return World().pretraining_corpus(plan.covariance_texts, seed=seed + 1)
    return load_wikitext(plan.covariance_texts, seed, loader)


# ----------------------------------------------------------------------------------------- tracing
def trace_prompts(
    profile: Profile, model, tokenizer, plan: Plan, seed: int, loader: Loader | None = None
) -> dict[str, list[tuple[str, str, str]]]:
    """Known facts to trace, as (prompt, true answer, subject) per relation: tiny, ``n_trace_prompts`` facts of each
    world relation in its request template; colab, the Space Needle and CounterFact records (their own prompts)."""
    if profile.name != "tiny":
        cases = load_counterfact(plan.n_trace_prompts, seed + 100, loader)
        return {
            "counterfact": [SPACE_NEEDLE] + [(c.request.text, c.request.target_true, c.request.subject) for c in cases]
        }
    world = World()
    prompts = {}
    for relation in RELATIONS:
        people = random.Random(seed).sample(known(model, tokenizer, world, relation), plan.n_trace_prompts)
        prompts[relation] = [(statement_prompt(relation, 1).format(p.name), p.value(relation), p.name) for p in people]
    return prompts


def trace_relations(
    model, tokenizer, prompts: dict[str, list[tuple[str, str, str]]], plan: Plan, seed: int, roles: bool = False
) -> dict:
    """MLP traces of every relation in ``prompts`` and residual / attention traces of ``plan.relation`` (MLP and
    attention over ``plan.trace_window`` layers): for each, the mean normalised effect (n_layers × T, or × the six
    ``TOKEN_ROLES`` with ``roles``, for prompts of different lengths), the column labels and the subject's last
    column."""
    traces: dict[str, dict] = {}
    for relation, triples in prompts.items():
        kinds = ("mlp", "residual", "attn") if relation == plan.relation else ("mlp",)
        prompt, _, subject = triples[0]
        if roles:
            labels, last = list(TOKEN_ROLES), TOKEN_ROLES.index("last subject token")
        else:
            labels = [tokenizer.decode([t]) for t in encode(tokenizer, prompt)]
            last = subject_positions(tokenizer, prompt, subject)[-1]
        traces[relation] = {"tokens": labels, "subject_last": last, "n_prompts": len(triples)}
        for kind in kinds:
            window = 1 if kind == "residual" else plan.trace_window
            effects, used = average_trace(
                model, tokenizer, triples, kind, window, plan.trace_min_drop, seed=seed, roles=roles
            )
            traces[relation][kind] = effects.tolist()
            traces[relation][f"{kind}_used"] = used
    return traces


def edit_site(trace: dict, early_layers: int) -> dict:
    """Where the MLP trace of one relation peaks among the first ``early_layers`` layers: the layer, the effect at
    the subject's last token and at the final token there, and the largest effect at any other position."""
    effects = torch.tensor(trace["mlp"])[:early_layers].nan_to_num(0.0)  # an empty token role has no effect
    subject_last = trace["subject_last"]
    layer = int(effects[:, subject_last].argmax())
    others = torch.cat([effects[:, :subject_last], effects[:, subject_last + 1 :]], dim=1)
    return {
        "layer": layer,
        "subject_last": float(effects[layer, subject_last]),
        "final_token": float(effects[:, -1].max()),
        "best_elsewhere": float(others.max()),
    }


# ----------------------------------------------------------------------------------------- independent edits
@dataclass
class EditorResult:
    """One editor over the independent edits: per-case scores averaged (CounterFact's ES, PS, NS; other
    attributes, portability, fluency), before and after where the unedited model is the reference."""

    editor: str
    efficacy: float
    efficacy_magnitude: float
    paraphrase: float
    neighbourhood_before: float
    neighbourhood_after: float
    attributes_before: float | None  # None: the cases have no attribute prompts (CounterFact)
    attributes_kept: float
    portability: float | None  # None: the cases have no portability probes (CounterFact)
    fluency_before: float
    fluency_after: float
    seconds: float

    @property
    def neighbourhood_drop(self) -> float:
        """How many points of neighbourhood accuracy the edits cost."""
        return self.neighbourhood_before - self.neighbourhood_after

    def to_json(self) -> dict:
        return asdict(self) | {"neighbourhood_drop": self.neighbourhood_drop}


def _flatten(rows: Sequence[Sequence[bool]]) -> list[bool]:
    return [value for row in rows for value in row]


def stated_fact(case: EditCase) -> str:
    """The new fact as a sentence: ``"ada stone works as a pilot ."`` (IKE's context)."""
    return f"{case.request.text} {case.request.target_new} ."


def in_context_case(case: EditCase) -> EditCase:
    """The case as IKE sees it (arXiv:2305.12740): the new fact stated before every raw prompt, and given as a hint
    (``restate_prompt``, the form tiny-chat reads hints in) to every chat question."""
    fact = stated_fact(case)
    return EditCase(
        replace(case.request, prompt=in_context_prompt(fact, case.request.prompt)),
        tuple(in_context_prompt(fact, p) for p in case.paraphrases),
        tuple(in_context_prompt(fact, p) for p in case.neighbours),
        tuple(replace(a, prompt=in_context_prompt(fact, a.prompt)) for a in case.attributes),
        tuple(replace(i, prompt=restate_prompt(i.prompt, fact.removesuffix(" ."))) for i in case.portability),
        tuple(in_context_prompt(fact, g) for g in case.generation_prompts),
    )


def kept(before: Sequence[bool], after: Sequence[bool]) -> float:
    """The share of the items right before that are still right after, 1 − F / accuracy before in the terms of
    ``core.evaluate.sample_wise`` (whose F is a share of all items); 1 when none was right."""
    right = [a for b, a in zip(before, after, strict=True) if b]
    return statistics.fmean(right) if right else 1.0


def magnitude(model, tokenizer, case: EditCase) -> float:
    """p(new) − p(old) after the request prompt: CounterFact's efficacy magnitude."""
    request = case.request
    p_new, p_old = target_logprobs(
        model, tokenizer, [request.text] * 2, [request.target_new, request.target_true]
    ).exp()
    return float((p_new - p_old).detach())


Entropy = Callable[[Sequence[str]], float]


def case_scores(model, tokenizer, case: EditCase, fluency_tokens: int, entropy: Entropy = n_gram_entropy) -> dict:
    """Every judgement of one case on the model as it is now: ``fact_scores``, the efficacy magnitude, portability
    (generated chat replies, scored by each item's scorer) and the ``entropy`` of free text about the subject."""
    scores: dict = fact_scores(model, tokenizer, case)
    scores["magnitude"] = magnitude(model, tokenizer, case)
    scores["portability"] = per_sample_correct(model, tokenizer, case.portability) if case.portability else []
    texts = continue_text(model, tokenizer, case.generation_prompts, fluency_tokens)
    scores["fluency"] = entropy(texts) if texts else float("nan")
    return scores


def _share(rows: Sequence[dict], key: str) -> float | None:
    """The share of True over every row's ``key`` list (None when there are none, e.g. colab's portability)."""
    values = [v for row in rows for v in row[key]]
    return statistics.fmean(values) if values else None


@dataclass(frozen=True)
class Editing:
    """What every edit of one run shares: the plan, the key covariance C, ROME's context prefixes, the rank-one
    update (the student's or ``rome_update``) and the fluency measure (the student's or ``n_gram_entropy``)."""

    plan: Plan
    covariance: torch.Tensor
    prefixes: tuple[str, ...]
    update: Update = rome_update
    entropy: Entropy = n_gram_entropy

    def apply(self, editor: str, model, tokenizer, case: EditCase) -> RomeEdit:
        """Apply ``editor`` (ROME or FT-L) to ``model`` in place for one case; ``undo_edit`` reverts it."""
        plan = self.plan
        if editor == "ROME":
            return rome_edit(model, tokenizer, case.request, plan.rome, self.covariance, self.prefixes, self.update)
        if editor == "FT-L":
            return finetune_layer_edit(
                model, tokenizer, case.request, plan.rome.layer, plan.ftl_steps, plan.ftl_lr, plan.ftl_linf
            )
        raise ValueError(f"unknown weight editor {editor!r}; choose ROME or FT-L (IKE edits the prompt, not weights)")

    def scores(self, model, tokenizer, case: EditCase) -> dict:
        """``case_scores`` with this run's fluency settings."""
        return case_scores(model, tokenizer, case, self.plan.fluency_tokens, self.entropy)


def prepare(model, tokenizer, plan: Plan, texts: Sequence[str], seed: int, **choices) -> Editing:
    """Estimate C on ``texts`` at the plan's layer and sample ROME's context prefixes from the model itself."""
    covariance = key_covariance(model, tokenizer, texts, plan.rome.layer)
    prefixes = context_prefixes(model, tokenizer, plan.n_prefixes, plan.prefix_length, seed)
    return Editing(plan, covariance, tuple(prefixes), **choices)


def evaluate_editor(
    editor: str, model, tokenizer, cases: Sequence[EditCase], baseline: Sequence[dict], editing: Editing
) -> EditorResult:
    """``editor`` (``EDITORS``) on each case independently: edit the unedited model, score, undo (IKE: score the
    in-context case). ``baseline`` is each case's scores on the unedited model (neighbourhood, attributes and fluency
    before)."""
    if editor not in EDITORS:
        raise ValueError(f"unknown editor {editor!r}; choose one of {', '.join(EDITORS)}")
    start = time.perf_counter()
    rows = []
    for case in tqdm(cases, desc=editor, leave=False):
        if editor == "IKE":
            rows.append(editing.scores(model, tokenizer, in_context_case(case)))
            continue
        edit = editing.apply(editor, model, tokenizer, case)
        rows.append(editing.scores(model, tokenizer, case))
        undo_edit(model, edit)
    return EditorResult(
        editor,
        efficacy=_share(rows, "efficacy"),
        efficacy_magnitude=statistics.fmean(r["magnitude"] for r in rows),
        paraphrase=_share(rows, "paraphrase"),
        neighbourhood_before=_share(baseline, "neighbourhood"),
        neighbourhood_after=_share(rows, "neighbourhood"),
        attributes_before=_share(baseline, "attributes"),
        attributes_kept=kept(_flatten([b["attributes"] for b in baseline]), _flatten([r["attributes"] for r in rows])),
        portability=_share(rows, "portability"),
        fluency_before=statistics.fmean(b["fluency"] for b in baseline),
        fluency_after=statistics.fmean(r["fluency"] for r in rows),
        seconds=time.perf_counter() - start,
    )


def compare_editors(model, tokenizer, cases: Sequence[EditCase], editing: Editing) -> list[EditorResult]:
    """Every editor of ``EDITORS`` over the same cases, against the unedited model's scores of them."""
    baseline = [editing.scores(model, tokenizer, case) for case in cases]
    return [evaluate_editor(editor, model, tokenizer, cases, baseline, editing) for editor in EDITORS]


# ----------------------------------------------------------------------------------------- sequential edits
OldSkills = Callable[[object, object], dict[str, float]]


def sequential_editing(
    model,
    tokenizer,
    cases: Sequence[EditCase],
    held: Sequence[EditCase],
    editing: Editing,
    old_skills: OldSkills | None = None,
) -> list[dict]:
    """ROME edits of ``cases`` applied one after another to ``model`` (in place, for good), each computed on the
    model the earlier ones left, with C and the prefixes of the unedited model (arXiv:2401.07453). Before the first
    edit and at each of ``plan.checkpoints()``: the retention of every edit so far (efficacy, paraphrase), the
    neighbourhood of all ``cases``, the true objects of ``held`` facts that are never edited, the fluency of free text
    about the ``held`` subjects, and ``old_skills(model, tokenizer)`` (the world's old skills, as in Lab 01)."""
    points = set(editing.plan.checkpoints())

    def measure(n: int) -> dict:
        scores = [fact_scores(model, tokenizer, c) for c in cases[:n]]
        neighbourhood = [
            prefers(model, tokenizer, c.neighbours, c.request.target_true, c.request.target_new) for c in cases
        ]
        unedited = [
            prefers(model, tokenizer, [c.request.text], c.request.target_true, c.request.target_new) for c in held
        ]
        prompts = [g for c in held for g in c.generation_prompts]
        row = {
            "edits": n,
            "retention": _share(scores, "efficacy"),
            "paraphrase": _share(scores, "paraphrase"),
            "neighbourhood": accuracy(_flatten(neighbourhood)),
            "unedited_facts": accuracy(_flatten(unedited)),
            "fluency": editing.entropy(continue_text(model, tokenizer, prompts, editing.plan.fluency_tokens)),
        }
        if old_skills is not None:
            row["old_skills"] = old_skills(model, tokenizer)
            row["old_skill_mean"] = statistics.fmean(row["old_skills"].values())
        return row

    curve = [measure(0)]
    for n, case in enumerate(tqdm(cases, desc="sequential ROME edits"), 1):
        editing.apply("ROME", model, tokenizer, case)
        if n in points:
            curve.append(measure(n))
    return curve


def old_skill_accuracies(profile: Profile, n_per_skill: int, seed: int) -> OldSkills | None:
    """The world's old skills as Lab 01 measures them (tiny: each old skill of the forgetting benchmark, scored by
    generation); None on colab, where GPT-2 XL has no chat skills and the unedited CounterFact facts stand in."""
    if profile.name != "tiny":
        return None
    bench = forgetting_benchmark(profile, n_per_skill=n_per_skill, seed=seed)

    def measure(model, tokenizer) -> dict[str, float]:
        snapshot = take_snapshot(model, tokenizer, bench, with_mc=False, max_new_tokens=profile.max_new_tokens)
        return {skill: accuracy(correct) for skill, correct in snapshot.old.items()}

    return measure


# ----------------------------------------------------------------------------------------- the whole study
def run(profile: Profile, plan: Plan, seed: int, loader: Loader | None = None) -> dict:
    """Lab 04 end to end with the package's own functions (what seeds 1 and 2 are): traces, the edit site, the three
    editors over the independent edits and the sequential curve; returns ``summarize``'s results."""
    seed_everything(seed)
    model, tokenizer = load_model(plan.model)
    prompts = trace_prompts(profile, model, tokenizer, plan, seed, loader)
    traces = trace_relations(model, tokenizer, prompts, plan, seed, roles=profile.name != "tiny")
    independent, sequence, held = edit_cases(profile, model, tokenizer, plan, seed, loader)
    editing = prepare(model, tokenizer, plan, covariance_texts(profile, plan, seed, loader), seed)
    editors = compare_editors(model, tokenizer, independent, editing)
    curve = sequential_editing(
        model, tokenizer, sequence, held, editing, old_skill_accuracies(profile, plan.n_per_skill, seed)
    )
    return summarize(profile, seed, plan, traces, editors, curve)


def summarize(
    profile: Profile, seed: int, plan: Plan, traces: dict, editors: Sequence[EditorResult], curve: list[dict]
) -> dict:
    """Lab 04's ``results/04.json``: the traces and the edit site of each relation, one row per editor and the
    sequential-editing curve, with the plan and the run environment."""
    early = max(1, anatomy_layers(traces) // 2)
    return {
        "lab": "04",
        "profile": profile.name,
        "seed": seed,
        "plan": asdict(plan),
        "traces": traces,
        "sites": {relation: edit_site(trace, early) for relation, trace in traces.items()},
        "early_layers": early,
        "editors": {e.editor: e.to_json() for e in editors},
        "sequential": curve,
        "environment": run_environment(),
    }


def anatomy_layers(traces: dict) -> int:
    """The number of layers of the traced model (rows of any trace)."""
    return len(next(iter(traces.values()))["mlp"])


def colab_budget(plan: Plan = PLANS["colab"], prompt_tokens: int = 32) -> LabBudget:
    """Lab 04 on a GPU, GPT-2 XL counted as float32 (the notebook loads it in 16 bits, half of the weights' share):
    ROME's value search back-propagates through the whole model to one vector δ, for each independent and
    sequential edit (``n_prefixes`` + 2 prompts of about ``prompt_tokens`` tokens); FT-L trains one MLP projection
    with Adam; decoding is the fluency text of every edit, its baseline and each checkpoint."""
    prompts = plan.n_prefixes + 2
    rome = TrainingRun(
        "ROME value search (each edit)",
        plan.rome.steps,
        prompts,
        1,
        prompt_tokens,
        prompt_tokens,
        trainable=GPT2_XL.hidden,
        repeats=plan.n_edits + plan.n_sequential,
        autocast=False,
    )
    ftl = TrainingRun(
        "FT-L (each edit)",
        plan.ftl_steps,
        1,
        1,
        prompt_tokens,
        prompt_tokens,
        trainable=GPT2_XL.hidden * GPT2_XL.intermediate,
        repeats=plan.n_edits,
        autocast=False,
    )
    checkpoints = len(plan.checkpoints()) + 1
    decoded = (4 * plan.n_edits + checkpoints * plan.n_edits) * plan.fluency_tokens
    return LabBudget("04_causal_tracing_and_rome", (rome, ftl), decoded, shape=GPT2_XL)
