"""An edit request and the prompts that judge it, in the schema of CounterFact (Meng et al. 2022, "Locating and
Editing Factual Associations in GPT", arXiv:2202.05262, sec. 4.2; KnowEdit, Zhang et al. 2024, arXiv:2401.01286).

A request rewrites one fact, (subject, relation, old object) → new object, given as a prompt template with ``{}``
where the subject goes: ``EditRequest("{} works as a", "ada stone", target_new="pilot", target_true="baker")``. An
``EditCase`` adds what the edit is judged on: paraphrases it never saw, neighbours (other subjects whose answer is
the old object, which must keep it), the same subject's other attributes, and portability probes (the new fact
asked for in another form, e.g. a chat question). The tiny world builds cases (``posttrain.world.tiny``), the colab
profile reads CounterFact records into them (``posttrain.world.hub``), and ``posttrain.methods.editing`` edits and
measures them: the type lives here because the world and the method both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .evaluate import Item


@dataclass(frozen=True)
class EditRequest:
    """Rewrite ``prompt.format(subject)`` → ``target_new`` (it was ``target_true``). ``prompt`` holds one ``{}``."""

    prompt: str
    subject: str
    target_new: str
    target_true: str
    relation: str = ""

    def __post_init__(self) -> None:
        if self.prompt.count("{}") != 1:
            raise ValueError(f"an edit prompt holds exactly one '{{}}' for the subject, got {self.prompt!r}")
        if not self.subject.strip():
            raise ValueError("an edit request needs a non-empty subject")
        if self.target_new == self.target_true:
            raise ValueError(f"a counterfactual edit needs a new object, but both targets are {self.target_new!r}")

    @property
    def text(self) -> str:
        """The prompt with the subject filled in: ``"ada stone works as a"``."""
        return self.prompt.format(self.subject)


@dataclass(frozen=True)
class AttributePrompt:
    """A prompt about the edited subject's *other* relation and the answer it must keep: ``("ada stone lives in",
    "paris")``."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class EditCase:
    """One request and its evaluation prompts (all complete texts, the subject filled in).

    ``paraphrases`` ask for the edited fact in words the edit never saw (the new object should win);
    ``neighbours`` ask other subjects the same relation, whose true answer is ``request.target_true`` (it should
    still win); ``attributes`` ask the subject's other relations; ``portability`` are items of another form (a chat
    question, a JSON reply) whose answer is the new object; ``generation_prompts`` start free text about the subject
    (fluency).
    """

    request: EditRequest
    paraphrases: tuple[str, ...]
    neighbours: tuple[str, ...]
    attributes: tuple[AttributePrompt, ...] = ()
    portability: tuple[Item, ...] = ()
    generation_prompts: tuple[str, ...] = field(default=())
