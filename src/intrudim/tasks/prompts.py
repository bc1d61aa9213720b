"""How a causal language model sees a task: a prompt, then one short answer text per label.

A causal LM is fine-tuned on a task as a language model (issue 13): each example becomes a prompt followed
by the text of its answer, the loss is taken on the answer tokens only, and the prediction is the label
whose answer has the highest total log-likelihood given the prompt (no sampling). This module holds the
prompt templates and the answer texts ("verbalizers") of the registered tasks; a task without its own
format gets a generic one whose answers are its label names.

Classification: every label is a candidate answer to the same prompt (``" positive"`` / ``" negative"``).
Multiple choice: each choice ``(context, option)`` is a candidate, the context as prompt and the option as
answer (WinoGrande: the sentence up to the blank, then the option and the rest of the sentence; review-summary:
the review, then a whole sentence restating it, every token of which the loss scores).
Answers start with a space so that they tokenize as the words that follow the prompt in running text.
"""

from __future__ import annotations

from dataclasses import dataclass

from intrudim.errors import IntrudimError
from intrudim.tasks.base import Example, Task, TaskKind

Candidate = tuple[str, str]
"""(prompt, answer): the text the LM is conditioned on and the text it is scored on."""


@dataclass(frozen=True)
class PromptFormat:
    """A task's prompt template and answers.

    ``template`` is formatted with ``text`` and ``pair`` (the example's text pair; ``pair`` is empty for
    single-sentence tasks). ``answers`` holds one answer text per label for classification and is ``None``
    for multiple choice, whose answers are the choices themselves.
    """

    template: str
    answers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.answers is not None:
            if any(not answer.strip() for answer in self.answers):
                raise IntrudimError(f"Every answer text must be non-empty; got {self.answers!r}.")
            if len(set(self.answers)) != len(self.answers):
                raise IntrudimError(f"Answer texts must differ from one another; got {self.answers!r}.")

    def prompt(self, text: str, pair: str | None) -> str:
        return self.template.format(text=text, pair=pair or "")

    def candidates(self, example: Example, kind: TaskKind) -> tuple[Candidate, ...]:
        """The (prompt, answer) candidates of ``example``; ``example.label`` indexes the right one."""
        if kind == "multiple_choice":
            return tuple((self.prompt(text, None), " " + (pair or "").strip()) for text, pair in example.choices)
        if self.answers is None:
            raise IntrudimError("A classification task needs one answer text per label; this prompt format has none.")
        text, pair = example.choices[0]
        prompt = self.prompt(text, pair)
        return tuple((prompt, answer) for answer in self.answers)


_FORMATS: dict[str, PromptFormat] = {
    "sentiment": PromptFormat("Review: {text}\nSentiment:", (" negative", " positive")),
    "topic": PromptFormat("Words: {text}\nTopic:", (" sports", " food", " weather", " technology")),
    "pair-match": PromptFormat("Animals: {text}\nQuestion: {pair}?\nAnswer:", (" no", " yes")),
    "agreement": PromptFormat("First: {text}\nSecond: {pair}\nSame opinion?\nAnswer:", (" no", " yes")),
    "review-summary": PromptFormat("Review: {text}\nSummary:"),  # the answer: a sentence restating the review
    "mnli": PromptFormat("Premise: {text}\nHypothesis: {pair}\nDoes the premise imply the hypothesis?\nAnswer:",
                         (" yes", " maybe", " no")),  # fmt: skip
    "sst2": PromptFormat("Review: {text}\nSentiment:", (" negative", " positive")),
    "qqp": PromptFormat("Question 1: {text}\nQuestion 2: {pair}\nSame question?\nAnswer:", (" no", " yes")),
    "fever": PromptFormat("Claim: {text}\nEvidence: {pair}\nVerdict:", (" supported", " refuted", " unknown")),
    "winogrande": PromptFormat("{text}"),
    "siqa": PromptFormat("{text}\nAnswer:"),
}


def default_prompt_format(task: Task) -> PromptFormat:
    """A task without its own format: the text (and pair), ``Answer:``, and its label names as answers."""
    template = "{text}\n{pair}\nAnswer:" if task.has_pairs else "{text}\nAnswer:"
    if task.kind == "multiple_choice":
        return PromptFormat("{text}")
    return PromptFormat(template, tuple(" " + name.replace("_", " ") for name in task.label_names))


def prompt_format(task: Task) -> PromptFormat:
    """The prompt format of ``task`` (its own when registered here, else :func:`default_prompt_format`)."""
    fmt = _FORMATS.get(task.name)
    if fmt is None:
        return default_prompt_format(task)
    if fmt.answers is not None and len(fmt.answers) != task.num_labels:
        raise IntrudimError(
            f"Task '{task.name}' has {task.num_labels} labels ({', '.join(task.label_names)}) but its prompt format "
            f"has {len(fmt.answers)} answers ({', '.join(a.strip() for a in fmt.answers)})."
        )
    return fmt
