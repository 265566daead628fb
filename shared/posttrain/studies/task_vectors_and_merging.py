"""Lab 05 study: task vectors, merging under interference, the chat vector, and merging back what fine-tuning broke.

1. ``task_finetunes``: tiny-chat fine-tuned separately on three new tasks (multiplication, subtraction, new facts);
   each difference from tiny-chat is a task vector (Ilharco et al. 2023, arXiv:2212.04089).
2. ``negation``: θ_chat − λ τ_refusal, where τ_refusal is a further fine-tune on refusals: refusal goes, the other
   skills stay (the paper's "forgetting via negation").
3. ``merging``: the three task vectors merged by plain averaging, task arithmetic, TIES (arXiv:2306.01708) and DARE
   (arXiv:2311.03099), each a setting of ``posttrain.methods.merging``'s one pipeline.
4. ``chat_vector_sweep``: tiny-base-cpt + λ (tiny-chat − tiny-base) over λ (Huang et al. 2024, arXiv:2310.04799): chat
   behaviour and refusals from the vector, knowledge only continued pre-training taught.
5. ``safety_merge``: Lab 01's fine-tune (it loses refusal) merged back toward tiny-chat over the merge weight,
   linearly and TIES-trimmed (the idea of Safeguard, arXiv:2412.19512), with Lab 01's sample-wise forgetting
   (arXiv:2510.17776) of the old skills.
6. ``analogy``: the shape of Synthetic2Real (arXiv:2406.02925): τ_B,synthetic + (τ_A,real − τ_A,synthetic), with raw
   text statements as "synthetic" data and chat questions as "real".

``run`` returns ``summarize``'s ``results/05.json``. Every setting (learning rates, λ, densities) was chosen on the
development seeds 10 and 11 (docs/labs/05_task_vectors_and_merging.md); the lab's seeds are 0, 1 and 2. The colab
profile runs the chat vector on Qwen2.5-0.5B: ``colab_chat_vector``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from ..core.budget import LabBudget, TrainingRun
from ..core.data import chat_example, text_example
from ..core.evaluate import Item, accuracy, sample_wise, skill_scores
from ..core.forgetting import K_OPTIONS
from ..core.models import load_model
from ..core.profiles import PROFILES, Profile, run_environment, seed_everything
from ..core.train import TrainConfig, train
from ..methods.merging import PAPER_STEPS, Merge, Steps, add_task_vector, chat_vector, merge_state_dicts, task_vector
from ..world.benchmarks import forgetting_benchmark
from ..world.hub import Loader
from ..world.tiny import World

State = dict[str, torch.Tensor]
TaskVector = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], State]
ChatVector = Callable[[State, State, State, float], State]
OLD_SKILLS = ("fact", "json", "refusal", "howto", "addition", "chat")


@dataclass(frozen=True)
class Plan:
    """Lab 05's settings (tiny profile; chosen on the development seeds).

    Task vectors come from ``task_steps`` steps per new task at ``task_lr`` (3e-4: at Lab 01's 1e-3 the fine-tunes
    wreck the old skills and every merge of them is bad). The negated skill's vector is ``negation_steps`` at
    ``negation_lr`` on its items. ``merge_scale`` is task arithmetic's λ, ``ties_density`` / ``dare_density`` the
    kept fractions; ``safety_*`` is Lab 01's run (multiplication, lr 1e-3, 150 steps) and the weights swept.
    """

    tasks: tuple[str, ...] = ("multiplication", "subtraction", "new_facts")
    task_steps: tuple[int, ...] = (150, 150, 250)
    task_lr: float = 3e-4
    batch_size: int = 32
    negated_skill: str = "refusal"
    negation_steps: int = 100
    negation_lr: float = 1e-3
    negation_scales: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5)
    negation_scale: float = 0.5
    merge_scale: float = 0.7
    ties_density: float = 0.5
    dare_density: float = 0.5
    chat_vector_scales: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
    safety_steps: int = 150
    safety_lr: float = 1e-3
    safety_weights: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    safety_density: float = 0.5
    analogy_steps: int = 100
    n_per_skill: int = 60


PLANS = {"tiny": Plan()}
# The colab chat vector: a base, its instruct model, and a continual pre-training of the same base (on code), one
# architecture and one vocabulary (docs/labs/05_task_vectors_and_merging.md).
COLAB_MODELS = {"base": "Qwen/Qwen2.5-0.5B", "chat": "Qwen/Qwen2.5-0.5B-Instruct", "cpt": "Qwen/Qwen2.5-Coder-0.5B"}


# ----------------------------------------------------------------------------------------- data and measurement
def skill_items(world: World, plan: Plan) -> dict[str, list[Item]]:
    """What every model of the lab is scored on: the three new tasks, Lab 01's old skills (``n_per_skill`` each,
    the fixed subsets of ``forgetting_benchmark``) and chat questions about the people only CPT taught."""
    old = forgetting_benchmark(PROFILES["tiny"], n_per_skill=plan.n_per_skill).old_skills
    return {
        **{task: world.new_task(task) for task in plan.tasks},
        **{skill: old[skill] for skill in OLD_SKILLS},
        "cpt_facts_chat": world.fact_items(world.cpt_people),
    }


class Scorer:
    """Scores state dicts on the lab's items with one model object (``load_state_dict`` and score): per-sample
    correctness (``scores``) and accuracies (``__call__``), on ``skills`` or on the ``default`` ones (the chat
    vector alone asks about the CPT-only people).

    Scores are kept per weights (``weights_digest``) and skill: the lab scores tiny-chat itself in four experiments
    and as the weight-0 end of both safety-merge sweeps, and greedy decoding gives an item the same reply whatever
    else is in its batch (``core.evaluate.correct_with_choices``), so a repeated state is scored once."""

    def __init__(self, model, tokenizer, items: dict[str, list[Item]], default: Sequence[str] | None = None):
        self.model, self.tokenizer, self.items = model, tokenizer, items
        self.default = tuple(default or items)
        self._known: dict[str, dict[str, list[bool]]] = {}

    def scores(self, state: Mapping[str, torch.Tensor], skills: Sequence[str] | None = None) -> dict[str, list[bool]]:
        names = tuple(skills or self.default)
        known = self._known.setdefault(weights_digest(state), {})
        missing = [name for name in names if name not in known]
        if missing:
            self.model.load_state_dict(state)
            self.model.eval()
            known.update(skill_scores(self.model, self.tokenizer, {name: self.items[name] for name in missing}))
        return {name: known[name] for name in names}

    def __call__(self, state: Mapping[str, torch.Tensor], skills: Sequence[str] | None = None) -> dict[str, float]:
        return {name: accuracy(correct) for name, correct in self.scores(state, skills).items()}


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A digest of a state dict's names, dtypes, shapes and exact bytes: equal digests, equal weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_of(model) -> State:
    """A detached copy of a model's weights."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def finetune(
    model,
    tokenizer,
    start: State,
    data: Sequence,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    raw_text: bool = False,
) -> State:
    """Fully fine-tune a copy of ``start`` (loaded into ``model``) on chat pairs, or on raw texts, and return its
    weights."""
    model.load_state_dict(start)
    examples = (
        [text_example(tokenizer, t) for t in data] if raw_text else [chat_example(tokenizer, u, a) for u, a in data]
    )
    config = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed, progress=False)
    train(model, examples, config, pad_id=tokenizer.pad_token_id)
    return state_of(model)


def task_finetunes(model, tokenizer, chat: State, world: World, plan: Plan, seed: int) -> dict[str, State]:
    """tiny-chat fine-tuned separately on each new task of ``plan`` (their chat questions and answers)."""
    tuned = {}
    for task, steps in tqdm(list(zip(plan.tasks, plan.task_steps, strict=True)), desc="task fine-tunes"):
        pairs = [(item.prompt, item.answer) for item in world.new_task(task)]
        tuned[task] = finetune(model, tokenizer, chat, pairs, steps, plan.task_lr, plan.batch_size, seed)
    return tuned


# ----------------------------------------------------------------------------------------- the experiments
def negation(
    score: Scorer, chat: State, skill_tuned: State, scales: Sequence[float], vector: TaskVector = task_vector
) -> dict[str, dict[str, float]]:
    """θ_chat − λ τ for each λ of ``scales`` (and λ = 0), where τ = ``vector(skill_tuned, chat)`` (Ilharco et al.
    2023, §3: negating a task vector removes the behaviour it adds). Keys ``"0"``, ``"0.5"``, ..."""
    tau = vector(skill_tuned, chat)
    rows = {"0": score(chat)}
    for scale in scales:
        rows[str(scale)] = score(add_task_vector(chat, tau, -scale))
    return rows


def merge_methods(plan: Plan, seed: int) -> dict[str, Merge]:
    """The merges of Lab 05's comparison, by label: plain averaging (the mean of the fine-tuned models, i.e. task
    arithmetic with λ = 1/n), task arithmetic at ``merge_scale``, TIES, DARE + task arithmetic and DARE + TIES."""
    n = len(plan.tasks)
    density = (plan.ties_density,) * n
    dare = (plan.dare_density,) * n
    return {
        "average": Merge("linear"),
        "task arithmetic": Merge("task_arithmetic", scale=plan.merge_scale),
        "TIES": Merge("ties", densities=density),
        "DARE + task arithmetic": Merge("dare_linear", densities=dare, scale=plan.merge_scale, seed=seed),
        "DARE + TIES": Merge("dare_ties", densities=dare, normalize=True, seed=seed),
    }


def merging(
    score: Scorer, chat: State, tuned: Mapping[str, State], plan: Plan, seed: int, steps: Steps = PAPER_STEPS
) -> dict[str, dict]:
    """Each merge of ``merge_methods`` of the task fine-tunes onto tiny-chat: every skill's accuracy and the mean
    over the merged tasks (``task_mean``), the interference measure of Yadav et al. 2023 (their Table 1)."""
    rows = {}
    for label, merge in tqdm(merge_methods(plan, seed).items(), desc="merges"):
        accuracies = score(merge_state_dicts(chat, [tuned[t] for t in plan.tasks], merge, steps))
        rows[label] = {"accuracy": accuracies, "task_mean": sum(accuracies[t] for t in plan.tasks) / len(plan.tasks)}
    return rows


def chat_vector_sweep(
    score: Scorer, base: State, chat: State, cpt: State, scales: Sequence[float], combine: ChatVector = chat_vector
) -> dict[str, dict[str, float]]:
    """θ_cpt + λ (θ_chat − θ_base) for each λ of ``scales`` (``combine``: ``merging.chat_vector`` or a student's),
    beside tiny-chat; λ = 0 is the CPT base itself. Keys ``"chat"`` and ``"0.0"``, ``"0.25"``, ..."""
    skills = list(score.items)
    rows = {"chat": score(chat, skills)}
    for scale in scales:
        rows[str(scale)] = score(combine(cpt, chat, base, scale), skills)
    return rows


def safety_merge(
    score: Scorer, chat: State, tuned: State, plan: Plan, steps: Steps = PAPER_STEPS, combine: ChatVector = chat_vector
) -> dict[str, dict]:
    """Lab 01's fine-tune merged back toward tiny-chat: θ_chat + α (θ_ft − θ_chat) over α (linear: the chat vector's
    formula θ_a + λ (θ_b − θ_c) with a = c = tiny-chat, computed by ``combine``) and θ_chat + α trim(τ) (TIES's trim
    of the one task vector, density ``safety_density``, through ``steps``). For each: accuracies on Lab 01's new task
    (multiplication) and the old skills, and per-sample
    forgetting (``sample_wise``, share of old items right before and wrong after, chance-adjusted) of tiny-chat →
    merged."""
    skills = ("multiplication", *OLD_SKILLS)  # Lab 01's new task and the old skills
    before = score.scores(chat, skills)
    ties = {weight: Merge("ties", densities=(plan.safety_density,), scale=weight) for weight in plan.safety_weights}
    merges = {
        "linear": lambda weight: combine(chat, tuned, chat, weight),
        "TIES": lambda weight: merge_state_dicts(chat, [tuned], ties[weight], steps),
    }
    rows: dict[str, dict] = {}
    for kind, merged in merges.items():
        rows[kind] = {}
        for weight in tqdm(plan.safety_weights, desc=f"safety merge ({kind})"):
            after = score.scores(merged(weight), skills)
            rows[kind][str(weight)] = {
                "accuracy": {name: accuracy(c) for name, c in after.items()},
                "forgetting": {
                    skill: asdict(sample_wise(before[skill], after[skill], k=K_OPTIONS)) for skill in OLD_SKILLS
                },
            }
    return rows


def restoring_weight(linear: Mapping[str, dict], refusal: float = 0.8) -> str:
    """The largest linear safety-merge weight (a key of ``safety_merge(...)["linear"]``) whose merged model refuses at
    least ``refusal``: the most of the new task kept with safety back; ``"0.0"`` (tiny-chat itself) when none does."""
    restored = [weight for weight, row in linear.items() if row["accuracy"]["refusal"] >= refusal]
    return max(restored, key=float, default="0.0")


def statements(task: str) -> list[str]:
    """A new arithmetic task as raw text ("3 times 4 is 12 ."): the analogy's "synthetic" data, unlike the chat
    questions that are evaluated ("real")."""
    return [
        f"{item.prompt.removeprefix('what is ').removesuffix(' ?')} is {item.answer} ."
        for item in World().new_task(task)
    ]


def analogy(
    model,
    tokenizer,
    score: Scorer,
    chat: State,
    real_a: State,
    plan: Plan,
    seed: int,
    scales: Sequence[float] = (0.5, 1.0),
) -> dict[str, dict[str, float]]:
    """Synthetic2Real's shape (arXiv:2406.02925): task A (multiplication) fine-tuned on real and on synthetic data,
    task B (subtraction) only on synthetic; is θ_chat + τ_B,syn + λ (τ_A,real − τ_A,syn) better on B's real form
    than θ_chat + τ_B,syn? Rows: tiny-chat, B synthetic only, and each λ."""
    tuned = {
        task: finetune(
            model,
            tokenizer,
            chat,
            statements(task),
            plan.analogy_steps,
            plan.task_lr,
            plan.batch_size,
            seed,
            raw_text=True,
        )
        for task in ("multiplication", "subtraction")
    }
    skills = ("subtraction", "multiplication", *OLD_SKILLS)
    rows = {"tiny-chat": score(chat, skills), "B synthetic": score(tuned["subtraction"], skills)}
    for scale in scales:
        merge = Merge("task_arithmetic", weights=(1.0, scale, -scale))
        state = merge_state_dicts(chat, [tuned["subtraction"], real_a, tuned["multiplication"]], merge)
        rows[f"B synthetic + {scale} (A real - A synthetic)"] = score(state, skills)
    return rows


# ----------------------------------------------------------------------------------------- the whole study
@dataclass
class Materials:
    """What every experiment of a run shares: the scorer (holding the one model object), the three shipped models'
    weights, the task fine-tunes, the negated skill's fine-tune and Lab 01's fine-tune."""

    score: Scorer
    chat: State
    base: State
    cpt: State
    tuned: dict[str, State]
    skill_tuned: State
    lab01: State


def prepare(plan: Plan, seed: int) -> Materials:
    """Load the tiny world's models and train every fine-tune the experiments merge (tiny profile, CPU)."""
    seed_everything(seed)
    world = World()
    model, tokenizer = load_model("tiny-chat", device="cpu", dtype=torch.float32)
    items = skill_items(world, plan)
    score = Scorer(model, tokenizer, items, default=[name for name in items if name != "cpt_facts_chat"])
    chat = state_of(model)
    base, cpt = (state_of(load_model(n, device="cpu", dtype=torch.float32)[0]) for n in ("tiny-base", "tiny-base-cpt"))
    tuned = task_finetunes(model, tokenizer, chat, world, plan, seed)
    pairs = [(item.prompt, item.answer) for item in world.skills[plan.negated_skill]]
    skill_tuned = finetune(model, tokenizer, chat, pairs, plan.negation_steps, plan.negation_lr, plan.batch_size, seed)
    pairs = [(item.prompt, item.answer) for item in world.new_task("multiplication")]
    lab01 = finetune(model, tokenizer, chat, pairs, plan.safety_steps, plan.safety_lr, plan.batch_size, seed)
    return Materials(score, chat, base, cpt, tuned, skill_tuned, lab01)


def run(
    profile: Profile,
    plan: Plan,
    seed: int,
    steps: Steps = PAPER_STEPS,
    vector: TaskVector = task_vector,
    combine: ChatVector = chat_vector,
) -> dict:
    """Lab 05 on the tiny profile, end to end, with ``steps``, ``vector`` and ``combine`` (the package's, or a
    student's merge steps, task vector and chat vector), as the notebook runs it: ``prepare``, then negation, the
    merges, the chat vector, the safety merge and the analogy; ``summarize``'s results."""
    if profile.name != "tiny":
        raise ValueError("Lab 05's full study runs on the tiny profile; on colab run colab_chat_vector")
    start = time.perf_counter()
    m = prepare(plan, seed)
    score = m.score
    results = {
        "tasks": {task: score(state) for task, state in m.tuned.items()},
        "negation": negation(score, m.chat, m.skill_tuned, plan.negation_scales, vector),
        "merging": merging(score, m.chat, m.tuned, plan, seed, steps),
        "chat_vector": chat_vector_sweep(score, m.base, m.chat, m.cpt, plan.chat_vector_scales, combine),
        "safety": {"finetuned": score(m.lab01), **safety_merge(score, m.chat, m.lab01, plan, steps, combine)},
        "analogy": analogy(score.model, score.tokenizer, score, m.chat, m.tuned["multiplication"], plan, seed),
    }
    return summarize(profile, seed, plan, results, time.perf_counter() - start)


def summarize(profile: Profile, seed: int, plan: Plan, results: dict, seconds: float) -> dict:
    """Lab 05's ``results/05.json``: every experiment's table, the plan and the run environment."""
    return {
        "lab": "05",
        "profile": profile.name,
        "seed": seed,
        "plan": asdict(plan),
        **results,
        "seconds": round(seconds, 1),
        "environment": run_environment(),
    }


def colab_chat_vector(
    models: Mapping[str, str] = COLAB_MODELS,
    scales: Sequence[float] = (0.5, 1.0),
    n_per_skill: int = 100,
    seed: int = 0,
    loader: Loader | None = None,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, float]]:
    """The chat vector on a real family: θ_cpt + λ (θ_chat − θ_base) for each λ, beside the CPT model and the chat
    model, scored on Lab 01's colab benchmark (GSM8K answers, JSON-format questions, AdvBench refusals, chat-template
    following; ``forgetting_benchmark``). The three models are held on the CPU in float32, one at a time on
    ``device`` for scoring."""
    bench = forgetting_benchmark(PROFILES["colab"], n_per_skill=n_per_skill, seed=seed, n_train=1, loader=loader)
    items = {"gsm8k": bench.new_task_eval, **bench.old_skills}
    states = {}
    for role in ("base", "chat", "cpt"):
        model, tokenizer = load_model(models[role], device="cpu", dtype=torch.float32)
        states[role] = state_of(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    score = Scorer(model.to(device), tokenizer, items)
    rows = {"chat": score(states["chat"]), "cpt": score(states["cpt"])}
    for scale in scales:
        rows[f"cpt + {scale} chat vector"] = score(chat_vector(states["cpt"], states["chat"], states["base"], scale))
    return rows


def colab_budget(n_per_skill: int = 100, scales: Sequence[float] = (0.5, 1.0), max_new_tokens: int = 256) -> LabBudget:
    """Lab 05 on a GPU: no training; ``colab_chat_vector`` scores 2 + ``len(scales)`` models of Qwen2.5-0.5B's shape,
    one at a time in float32 (three state dicts wait on the CPU), on Lab 01's colab benchmark: GSM8K, JSON and refusal
    prompts (``n_per_skill`` each) and the template probes (a third of them), each decoding up to ``max_new_tokens``.
    Memory counts one sequence's forward pass as training would store it (an over-estimate for decoding)."""
    scoring = TrainingRun(
        "chat vector: scoring only (float32, no gradients)",
        0,
        1,
        1,
        max_new_tokens,
        max_new_tokens,
        trainable=0,
        autocast=False,
        optimizer=False,
    )
    prompts = 3 * n_per_skill + n_per_skill  # GSM8K, JSON, refusal, and the probes (every third of 3 skills)
    return LabBudget("05_task_vectors_and_merging", (scoring,), (2 + len(scales)) * prompts * max_new_tokens)
