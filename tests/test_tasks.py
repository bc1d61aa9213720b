"""Task registry: generated tasks (deterministic, disjoint splits, fractions) and the paper-task loaders."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from collections import Counter
from pathlib import Path

import pytest

from intrudim.errors import IntrudimError
from intrudim.tasks import get_task, list_tasks, task_names

GENERATED = ("sentiment", "topic", "pair-match", "agreement", "review-summary")
PAPER_TASKS = ("mnli", "sst2", "qqp", "winogrande", "siqa", "fever")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_registry_lists_the_generated_offline_tasks_and_the_six_paper_tasks() -> None:
    infos = {info.name: info for info in list_tasks()}
    assert set(GENERATED) | set(PAPER_TASKS) == set(infos) == set(task_names())
    assert all(infos[name].offline and infos[name].train_size == 4000 for name in GENERATED)
    assert not any(infos[name].offline for name in PAPER_TASKS)
    assert len({infos[name].description for name in GENERATED}) == len(GENERATED)
    assert infos["winogrande"].kind == infos["siqa"].kind == infos["review-summary"].kind == "multiple_choice"
    assert (infos["mnli"].num_classes, infos["topic"].num_classes, infos["siqa"].num_classes) == (3, 4, 3)


@pytest.mark.parametrize("name", GENERATED)
def test_generated_task_is_deterministic_balanced_and_held_out(name: str) -> None:
    first, again, other = get_task(name, seed=3), get_task(name, seed=3), get_task(name, seed=4)
    assert first.train == again.train and first.validation == again.validation
    assert first.train != other.train
    assert (len(first.train), len(first.validation)) == (4000, 400)
    counts = Counter(example.label for example in first.train)
    assert set(counts) == set(range(first.num_labels))
    assert min(counts.values()) > 0.6 * len(first.train) / first.num_labels  # roughly balanced
    train_inputs = {example.choices for example in first.train}
    assert not any(example.choices in train_inputs for example in first.validation)


_NEGATIONS = {"not", "never", "hardly"}
_JOINS = (" , and ", " . also , ", " , but ", " . however , ")


def _polarity(clause: str) -> int:
    """An independent reading of a generated opinion clause: its last word's polarity, flipped by a negation."""
    from intrudim.tasks.generated import _POSITIVE

    words = clause.split()
    return int((words[-1] in _POSITIVE) != bool(_NEGATIONS & set(words)))


def test_review_summary_answers_with_a_sentence_restating_the_review() -> None:
    from intrudim.tasks.prompts import prompt_format

    task = get_task("review-summary", seed=5, max_train_examples=300, max_validation_examples=50)
    assert (task.kind, task.num_labels, task.head_outputs) == ("multiple_choice", 4, 1)
    fmt = prompt_format(task)
    nouns, shapes = set(), Counter()
    for example in task.train + task.validation:
        review = example.choices[0][0]
        join = next(j for j in _JOINS if j in review)
        first, second = review.split(join)
        shapes[join] += 1
        truth = (_polarity(first), _polarity(second))
        assert (truth[0] == truth[1]) == (join in _JOINS[:2])  # "and" joins agreeing opinions, "but" contrasting ones
        candidates = fmt.candidates(example, task.kind)
        assert all(prompt == f"Review: {review}\nSummary:" for prompt, _ in candidates)  # one review, four answers
        sentences = [answer for _, answer in candidates]
        assert len(set(sentences)) == 4
        right = sentences[example.label].split()
        noun_1, noun_2 = right[4], right[-1].rstrip(".")
        assert noun_1 != noun_2 and f"the {noun_1} " in first and f"the {noun_2} " in second + " "
        verbs = ("disliked", "liked")
        assert right == ["The", "reviewer", verbs[truth[0]], "the", noun_1, "and" if truth[0] == truth[1] else "but",
                         verbs[truth[1]], "the", f"{noun_2}."]  # fmt: skip
        for sentence in sentences:  # the wrong ones: the same sentence, only the polarity words (and "and"/"but") changed
            words = sentence.split()
            assert len(words) == len(right)
            assert {i for i, (a, b) in enumerate(zip(words, right, strict=True)) if a != b} <= {2, 5, 6}
        nouns.update((noun_1, noun_2))
    assert len(nouns) >= 15 and min(shapes.values()) > 0.15 * sum(shapes.values())
    counts = Counter(example.label for example in task.train)
    assert set(counts) == {0, 1, 2, 3}


def test_the_tasks_command_lists_review_summary() -> None:
    from typer.testing import CliRunner

    from intrudim.cli.app import app

    done = CliRunner().invoke(app, ["tasks", "--json"])
    assert done.exit_code == 0, done.output
    listed = {row["name"]: row for row in json.loads(done.output)}
    assert listed["review-summary"]["kind"] == "multiple_choice" and listed["review-summary"]["offline"] is True
    assert listed["review-summary"]["num_classes"] == 4 and "running text" in listed["review-summary"]["description"]


def test_kinds_differ_pair_task_has_pairs() -> None:
    assert get_task("pair-match").has_pairs and get_task("agreement").has_pairs
    assert not get_task("sentiment").has_pairs
    assert get_task("topic").num_labels == 4


def test_train_fraction_keeps_nested_seeded_subsets() -> None:
    full = get_task("sentiment", seed=1)
    quarter = get_task("sentiment", seed=1, train_fraction=0.25)
    half = get_task("sentiment", seed=1, train_fraction=0.5)
    assert (len(quarter.train), len(half.train)) == (1000, 2000)
    assert set(quarter.train) <= set(half.train) <= set(full.train)
    assert quarter.validation == full.validation
    with pytest.raises(IntrudimError, match="train_fraction=1.5"):
        get_task("sentiment", train_fraction=1.5)


def test_sizes_can_be_set() -> None:
    task = get_task("topic", max_train_examples=64, max_validation_examples=16)
    assert (len(task.train), len(task.validation)) == (64, 16)


def test_unknown_task_names_the_close_match() -> None:
    with pytest.raises(IntrudimError, match="Unknown task 'sentimnt'.*Did you mean 'sentiment'"):
        get_task("sentimnt")


def _paper_rows(tmp_path: Path) -> dict[str, Path]:
    """A few rows of each paper task, in the dataset's real column format and split names."""
    folders = {}
    mnli = tmp_path / "mnli"
    _write_jsonl(mnli / "train.jsonl", [
        {"premise": "A man eats.", "hypothesis": "A person eats.", "label": 0, "idx": 0},
        {"premise": "A man eats.", "hypothesis": "Nobody eats.", "label": 2, "idx": 1},
    ])  # fmt: skip
    _write_jsonl(mnli / "validation_matched.jsonl", [
        {"premise": "It rains.", "hypothesis": "It is wet.", "label": 1, "idx": 0},
    ])  # fmt: skip
    _write_jsonl(mnli / "test_matched.jsonl", [{"premise": "x", "hypothesis": "y", "label": -1, "idx": 0}])
    folders["mnli"] = mnli
    sst2 = tmp_path / "sst2"
    _write_jsonl(sst2 / "train.jsonl", [{"sentence": "a gorgeous film", "label": 1, "idx": 0},
                                        {"sentence": "dull", "label": 0, "idx": 1}])  # fmt: skip
    _write_jsonl(sst2 / "validation.jsonl", [{"sentence": "fine work", "label": 1, "idx": 0}])
    folders["sst2"] = sst2
    qqp = tmp_path / "qqp"
    _write_jsonl(qqp / "train.jsonl", [{"question1": "How old?", "question2": "What age?", "label": 1, "idx": 0}])
    _write_jsonl(qqp / "validation.jsonl", [{"question1": "Why?", "question2": "When?", "label": 0, "idx": 0}])
    folders["qqp"] = qqp
    wino = tmp_path / "winogrande"
    _write_jsonl(wino / "train.jsonl", [
        {"sentence": "Ian volunteered to eat Dennis's menudo because _ despised eating intestine.",
         "option1": "Ian", "option2": "Dennis", "answer": "2"},
    ])  # fmt: skip
    _write_jsonl(wino / "validation.jsonl", [
        {"sentence": "The trophy didn't fit the case because _ was too big.", "option1": "trophy",
         "option2": "case", "answer": "1"},
        {"sentence": "No answer _ here.", "option1": "a", "option2": "b", "answer": ""},
    ])  # fmt: skip
    folders["winogrande"] = wino
    siqa = tmp_path / "siqa"
    _write_jsonl(siqa / "train.jsonl", [
        {"context": "Tracy didn't go home that evening.", "question": "What does Tracy need to do before this?",
         "answerA": "make a new plan", "answerB": "Go home and see Riley", "answerC": "Find somewhere to go",
         "label": "3"},
    ])  # fmt: skip
    _write_jsonl(siqa / "validation.jsonl", [
        {"context": "Sydney walked past.", "question": "How would you describe Sydney?", "answerA": "sympathetic",
         "answerB": "like a person who was unable to help", "answerC": "incredulous", "label": "1"},
    ])  # fmt: skip
    folders["siqa"] = siqa
    fever = tmp_path / "fever"
    _write_jsonl(fever / "train.jsonl", [
        {"id": 75397, "label": "SUPPORTS", "claim": "Nikolaj Coster-Waldau worked with the Fox Broadcasting Company.",
         "evidence_annotation_id": 92206, "evidence_id": 104971, "evidence_wiki_url": "Nikolaj_Coster-Waldau",
         "evidence_sentence_id": 7},
        {"id": 75397, "label": "SUPPORTS", "claim": "Nikolaj Coster-Waldau worked with the Fox Broadcasting Company.",
         "evidence_annotation_id": 92206, "evidence_id": 104971, "evidence_wiki_url": "Fox_Broadcasting_Company",
         "evidence_sentence_id": -1},
        {"id": 150448, "label": "REFUTES", "claim": "Roman Atwood is a content creator.",
         "evidence_annotation_id": 174271, "evidence_id": 187498, "evidence_wiki_url": "Roman_Atwood",
         "evidence_sentence_id": 1},
    ])  # fmt: skip
    _write_jsonl(fever / "labelled_dev.jsonl", [
        {"id": 1, "label": "NOT ENOUGH INFO", "claim": "Something unverifiable.", "evidence_annotation_id": 1,
         "evidence_id": -1, "evidence_wiki_url": "", "evidence_sentence_id": -1},
    ])  # fmt: skip
    folders["fever"] = fever
    return folders


def test_paper_task_loaders_format_real_rows(tmp_path: Path) -> None:
    folders = _paper_rows(tmp_path)
    mnli = get_task("mnli", data_path=folders["mnli"])
    assert mnli.train[1].choices == (("A man eats.", "Nobody eats."),) and mnli.train[1].label == 2
    assert mnli.validation[0].label == 1 and mnli.kind == "classification" and mnli.num_labels == 3
    sst2 = get_task("sst2", data_path=folders["sst2"])
    assert sst2.train[0].choices == (("a gorgeous film", None),) and sst2.train[0].label == 1
    qqp = get_task("qqp", data_path=folders["qqp"])
    assert qqp.train[0].choices == (("How old?", "What age?"),) and qqp.train[0].label == 1
    wino = get_task("winogrande", data_path=folders["winogrande"])
    assert wino.kind == "multiple_choice" and wino.head_outputs == 1
    assert wino.train[0].choices == (
        ("Ian volunteered to eat Dennis's menudo because", "Ian despised eating intestine."),
        ("Ian volunteered to eat Dennis's menudo because", "Dennis despised eating intestine."),
    )
    assert wino.train[0].label == 1 and wino.validation[0].label == 0
    assert len(wino.validation) == 1  # the row without an answer is skipped
    siqa = get_task("siqa", data_path=folders["siqa"])
    context = "Tracy didn't go home that evening. What does Tracy need to do before this?"
    assert siqa.train[0].choices[2] == (context, "Find somewhere to go") and siqa.train[0].label == 2
    assert len(siqa.train[0].choices) == 3
    fever = get_task("fever", data_path=folders["fever"])
    assert [e.label for e in fever.train] == [0, 1]  # one row per claim id
    assert fever.train[0].choices == (("Nikolaj Coster-Waldau worked with the Fox Broadcasting Company.", None),)
    assert fever.validation[0].label == 2


def test_paper_task_from_save_to_disk_folder(tmp_path: Path) -> None:
    import datasets

    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 0], "idx": [0, 1]}),
        "validation": datasets.Dataset.from_dict({"sentence": ["ok"], "label": [1], "idx": [0]}),
    })  # fmt: skip
    splits.save_to_disk(str(tmp_path / "sst2_disk"))
    task = get_task("sst2", data_path=tmp_path / "sst2_disk")
    assert [e.label for e in task.train] == [1, 0] and task.validation[0].choices == (("ok", None),)


def test_missing_dataset_says_how_to_provide_it(tmp_path: Path) -> None:
    with pytest.raises(IntrudimError, match="not in the local datasets cache.*--data-path"):
        get_task("mnli")
    with pytest.raises(IntrudimError, match="does not exist.*save_to_disk"):
        get_task("qqp", data_path=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IntrudimError, match="holds no dataset_dict.json"):
        get_task("qqp", data_path=tmp_path / "empty")


def test_wrong_columns_are_named(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "bad" / "train.jsonl", [{"text": "hello", "label": 1}])
    _write_jsonl(tmp_path / "bad" / "validation.jsonl", [{"text": "hi", "label": 0}])
    with pytest.raises(IntrudimError, match=r"columns \['sentence'\] are missing"):
        get_task("sst2", data_path=tmp_path / "bad")


def test_missing_validation_split_lists_what_exists(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "only_train" / "train.jsonl", [{"sentence": "x", "label": 1}])
    with pytest.raises(IntrudimError, match=r"has the splits \['train'\]"):
        get_task("sst2", data_path=tmp_path / "only_train")


def test_tasks_command_json() -> None:
    import typer
    from typer.testing import CliRunner

    from intrudim.cli.train import register

    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["tasks", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows][: len(GENERATED)] == list(GENERATED)
    assert {row["name"]: row["offline"] for row in rows}["fever"] is False
    table = CliRunner().invoke(app, ["tasks"])
    assert table.exit_code == 0 and "pair-match" in table.stdout
