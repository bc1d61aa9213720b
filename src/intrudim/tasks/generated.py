"""Generated tasks: embedded, offline and deterministic from a seed.

The sequence-classification tasks (:func:`generated_task_specs`) stand in for the paper's six tasks (Section 3,
Appendix A) on a laptop: each is learned by the embedded MiniLM to high accuracy within a few hundred steps on CPU,
and they are of different kinds (single-sentence sentiment, four-way topic, sentence-pair matching) so that
continual learning (Fig. 8) has distinct tasks to move between. Sentences are built from common English words so
the pre-trained model's knowledge helps, as it does for real tasks.

The running-text tasks (:func:`running_text_task_specs`) are multiple choice whose right answer is a sentence, for
fine-tuning a causal LM as instruction tuning does: the loss over the whole target sentence, not one label word
(issue 27, part 3). ``review-summary``'s prompt is a review built like ``sentiment``'s (negation, contrast) about two
things, and its answer restates it, e.g. " The reviewer liked the movie but disliked the service."; the wrong
candidates are the same sentence with the polarity words changed, so accuracy (the candidate of highest total
log-likelihood) measures the task.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from intrudim.tasks.base import Example, Task, TaskInfo, TaskKind

DEFAULT_TRAIN_SIZE = 4000
DEFAULT_VALIDATION_SIZE = 400

_NOUNS = (
    "movie", "book", "meal", "trip", "hotel", "show", "concert", "game", "class", "phone",
    "car", "song", "visit", "party", "service", "room", "story", "album", "team", "park",
)
_POSITIVE = (
    "great", "wonderful", "excellent", "lovely", "fantastic", "pleasant", "brilliant", "superb",
    "delightful", "amazing", "charming", "perfect", "enjoyable", "good", "fine", "nice",
)
_NEGATIVE = (
    "terrible", "awful", "horrible", "boring", "dreadful", "poor", "bad", "disappointing",
    "dull", "miserable", "annoying", "painful", "weak", "ugly", "sad", "lousy",
)
_NEUTRAL = (
    "long", "short", "new", "old", "early", "late", "quiet", "busy", "large", "small",
    "local", "recent", "usual", "simple", "modern", "plain",
)
_NEGATIONS = ("not", "never", "hardly", "not at all")
_SIMPLE_CLAUSES = (
    "the {n} was {o}",
    "i found the {n} {o}",
    "honestly the {n} felt {o}",
    "everyone said the {n} was {o}",
)
_NEGATED_CLAUSES = (
    "the {n} was {neg} {o}",
    "i found the {n} {neg} {o}",
    "honestly the {n} felt {neg} {o}",
    "everyone said the {n} was {neg} {o}",
)

_TOPICS: dict[str, tuple[str, ...]] = {
    "sports": (
        "football", "goal", "coach", "match", "league", "player", "score", "stadium", "tennis",
        "referee", "season", "team", "race", "ball", "champion", "tournament",
    ),
    "food": (
        "bread", "cheese", "soup", "recipe", "kitchen", "flavor", "dinner", "salad", "sugar",
        "butter", "oven", "rice", "chicken", "fruit", "sauce", "breakfast",
    ),
    "weather": (
        "rain", "storm", "wind", "cloud", "snow", "sunny", "temperature", "forecast", "thunder",
        "fog", "humid", "frost", "breeze", "heat", "winter", "weather",
    ),
    "technology": (
        "computer", "software", "internet", "laptop", "network", "data", "screen", "keyboard",
        "server", "program", "digital", "code", "device", "battery", "robot", "chip",
    ),
}
_FILLER = (
    "the", "a", "today", "people", "said", "about", "with", "from", "very", "this", "that",
    "there", "many", "new", "again", "after", "before", "then", "of", "and",
)

_ANIMALS = (
    "dog", "cat", "horse", "bird", "fish", "rabbit", "mouse", "cow", "sheep", "goat",
    "lion", "tiger", "bear", "wolf", "fox", "duck", "frog", "snake", "monkey", "deer",
)
_PLACES = ("garden", "house", "field", "river", "forest", "barn", "road", "yard", "hill", "lake")


def _opinion_clause(rng: random.Random, polarity: int, noun: str | None = None) -> str:
    """A clause whose meaning has ``polarity`` (1 positive) about ``noun`` (default: a random one): an opinion
    word, negated half of the time."""
    noun = noun if noun is not None else rng.choice(_NOUNS)
    if rng.random() < 0.5:
        word = rng.choice(_POSITIVE if polarity == 1 else _NEGATIVE)
        return rng.choice(_SIMPLE_CLAUSES).format(n=noun, o=word)
    word = rng.choice(_NEGATIVE if polarity == 1 else _POSITIVE)  # "not bad" is positive
    return rng.choice(_NEGATED_CLAUSES).format(n=noun, o=word, neg=rng.choice(_NEGATIONS))


def _sentiment_example(rng: random.Random) -> Example:
    """Review-like sentences with negation and contrast: "X but Y" takes the polarity of Y, "not" flips a word."""
    label = rng.randrange(2)
    shape = rng.randrange(3)
    if shape == 0:
        text = f"{_opinion_clause(rng, label)} and the {rng.choice(_NOUNS)} was {rng.choice(_NEUTRAL)}"
    elif shape == 1:
        text = f"{_opinion_clause(rng, 1 - label)} , but {_opinion_clause(rng, label)}"
    else:
        text = f"{_opinion_clause(rng, label)} , and {_opinion_clause(rng, label)}"
    return Example(choices=((text, None),), label=label)


def _topic_example(rng: random.Random) -> Example:
    """A bag of words, most of them from one topic; the label is that topic (four classes)."""
    names = list(_TOPICS)
    label = rng.randrange(len(names))
    words = rng.sample(_TOPICS[names[label]], 3)
    for other in rng.sample([n for n in names if n != names[label]], 2):
        words += rng.sample(_TOPICS[other], 2)  # a close majority: 3 against 2 and 2
    words += rng.sample(_FILLER, 4)
    rng.shuffle(words)
    return Example(choices=((" ".join(words), None),), label=label)


def _pair_match_example(rng: random.Random) -> Example:
    """Premise names three animals in places; does the hypothesis name one of them? (sentence pairs)."""
    animals = rng.sample(_ANIMALS, 4)
    places = rng.sample(_PLACES, 3)
    premise = f"a {animals[0]} in the {places[0]} , a {animals[1]} by the {places[1]} and a {animals[2]} near the {places[2]}"
    label = rng.randrange(2)
    asked = rng.choice(animals[:3]) if label == 1 else animals[3]
    hypothesis = f"there is a {asked}"
    return Example(choices=((premise, hypothesis),), label=label)


def _agreement_example(rng: random.Random) -> Example:
    """Two opinions, each possibly negated: do they agree in polarity? (a two-step, compositional pair task)."""
    first = rng.randrange(2)
    label = rng.randrange(2)
    second = first if label == 1 else 1 - first
    return Example(choices=((_opinion_clause(rng, first), _opinion_clause(rng, second)),), label=label)


_LIKED = ("disliked", "liked")  # the summary's polarity word for polarity 0 and 1
_SAME_JOINS = (" , and", " . also ,")  # how the review joins two opinions of the same polarity
_CONTRAST_JOINS = (" , but", " . however ,")  # … and of opposite polarities
SUMMARY_POLARITIES: tuple[tuple[int, int], ...] = ((1, 1), (1, 0), (0, 1), (0, 0))
"""The candidates of a ``review-summary`` example, in label order: (first, second) polarity, 1 liked."""


def review_summary_sentence(first: str, second: str, polarities: tuple[int, int]) -> str:
    """The running-text answer: "The reviewer liked the movie but disliked the service." ("and" when the two
    polarities agree, "but" when they differ)."""
    joint = "and" if polarities[0] == polarities[1] else "but"
    return f"The reviewer {_LIKED[polarities[0]]} the {first} {joint} {_LIKED[polarities[1]]} the {second}."


def _review_summary_example(rng: random.Random) -> Example:
    """A review of two things (each opinion possibly negated, joined by "and" or, in contrast, "but"); the choices
    are the four summaries of it, one per pair of polarities, the right one its label."""
    first, second = rng.sample(_NOUNS, 2)
    truth = (rng.randrange(2), rng.randrange(2))
    joins = _SAME_JOINS if truth[0] == truth[1] else _CONTRAST_JOINS
    review = f"{_opinion_clause(rng, truth[0], first)}{rng.choice(joins)} {_opinion_clause(rng, truth[1], second)}"
    choices = tuple((review, review_summary_sentence(first, second, p)) for p in SUMMARY_POLARITIES)
    return Example(choices=choices, label=SUMMARY_POLARITIES.index(truth))


@dataclass(frozen=True)
class GeneratedTaskSpec:
    """How to make one generated task: a classification task, or multiple choice (``kind``) whose ``label_names``
    name the choices in order."""

    name: str
    label_names: tuple[str, ...]
    make_example: Callable[[random.Random], Example]
    description: str
    kind: TaskKind = "classification"
    paper: str = "stand-in for the paper's tasks (Sec. 3, App. A)"

    def info(self) -> TaskInfo:
        return TaskInfo(
            name=self.name,
            kind=self.kind,
            num_classes=len(self.label_names),
            description=self.description,
            offline=True,
            train_size=DEFAULT_TRAIN_SIZE,
            validation_size=DEFAULT_VALIDATION_SIZE,
            paper=self.paper,
            source="generated",
        )

    def build(
        self,
        seed: int,
        train_size: int = DEFAULT_TRAIN_SIZE,
        validation_size: int = DEFAULT_VALIDATION_SIZE,
    ) -> Task:
        """Generate the splits. The validation split uses its own stream so it never overlaps by construction."""
        train_rng = random.Random(f"{self.name}/train/{seed}")
        validation_rng = random.Random(f"{self.name}/validation/{seed}")
        train = tuple(self.make_example(train_rng) for _ in range(train_size))
        seen = {example.choices for example in train}
        validation: list[Example] = []
        while len(validation) < validation_size:
            example = self.make_example(validation_rng)
            if example.choices not in seen:  # held-out means unseen sentences
                validation.append(example)
        return Task(
            name=self.name,
            kind=self.kind,
            label_names=self.label_names,
            train=train,
            validation=tuple(validation),
            source="generated",
            metadata={"seed": seed},
        )


def generated_task_specs() -> tuple[GeneratedTaskSpec, ...]:
    """The embedded classification tasks, in registry order (the running-text tasks follow them in the registry:
    :func:`running_text_task_specs`)."""
    return (
        GeneratedTaskSpec(
            name="sentiment",
            label_names=("negative", "positive"),
            make_example=_sentiment_example,
            description="single sentence: polarity of reviews with negation (\"not bad\") and contrast (\"X, but Y\")",
        ),
        GeneratedTaskSpec(
            name="topic",
            label_names=tuple(_TOPICS),
            make_example=_topic_example,
            description="single sentence: majority topic (3 words against 2 and 2) of a shuffled bag of words, 4 classes",
        ),
        GeneratedTaskSpec(
            name="pair-match",
            label_names=("absent", "present"),
            make_example=_pair_match_example,
            description="sentence pair: does the hypothesis name an animal the premise mentions",
        ),
        GeneratedTaskSpec(
            name="agreement",
            label_names=("disagree", "agree"),
            make_example=_agreement_example,
            description="sentence pair: do two opinions (with negation) have the same polarity",
        ),
    )


def running_text_task_specs() -> tuple[GeneratedTaskSpec, ...]:
    """The embedded tasks whose answer is a sentence (multiple choice), in registry order."""
    return (
        GeneratedTaskSpec(
            name="review-summary",
            label_names=tuple(", ".join(_LIKED[p] for p in pair) for pair in SUMMARY_POLARITIES),
            make_example=_review_summary_example,
            description="running text: restate a two-part review (negation, contrast) as \"The reviewer liked the X "
            "but disliked the Y.\"; 4 choices, the polarity words changed",
            kind="multiple_choice",
            paper="stand-in for instruction tuning: the loss over a whole running-text target (issue 27, part 3)",
        ),
    )
