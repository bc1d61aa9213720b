"""Runs side by side in worker processes (intrudim.side_by_side): the same weights bit for bit as one after the
other, every step reported back here, an error raised here with its own message; continual's methods the same."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_continual import _config as continual_config  # noqa: E402
from test_train import _config, tiny_bert  # noqa: E402, F401  (a session fixture, used by name)

from intrudim.errors import IntrudimError  # noqa: E402
from intrudim.side_by_side import run_side_by_side  # noqa: E402
from intrudim.train.side_by_side import train_side_by_side  # noqa: E402


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert files, folder
    return {f"{path.name}:{key}": value for path in files for key, value in load_file(str(path)).items()}


def test_runs_side_by_side_write_the_same_weights_as_one_after_the_other(tiny_bert: Path, tmp_path: Path) -> None:  # noqa: F811
    configs = {"lora": _config(tiny_bert, max_steps=5, checkpoint_every=None),
               "full": _config(tiny_bert, method="full", max_steps=5, checkpoint_every=None, lr=1e-3)}  # fmt: skip
    alone = train_side_by_side({n: (c, tmp_path / "alone" / n) for n, c in configs.items()}, tmp_path / "cache",
                               workers=1)  # fmt: skip
    steps: list[tuple[str, int]] = []
    beside = train_side_by_side({n: (c, tmp_path / "beside" / n) for n, c in configs.items()}, tmp_path / "cache",
                                workers=2, on_step=lambda name, step: steps.append((name, step)))  # fmt: skip
    for name in configs:
        assert beside[name].steps == alone[name].steps == 5
        assert beside[name].final_accuracy == alone[name].final_accuracy
        assert beside[name].final_intruders == alone[name].final_intruders
        one, two = _weights(alone[name].final_dir), _weights(beside[name].final_dir)
        assert one.keys() == two.keys()
        for key in one:
            assert torch.equal(one[key], two[key]), (name, key)
        assert [step for n, step in steps if n == name] == [1, 2, 3, 4, 5]  # every step, in order, reported here


def _fails(value: int, *, report) -> int:  # noqa: ANN001
    report(value)
    if value == 2:
        raise IntrudimError(f"job {value} refused its input")
    return value


def _doubles(value: int, *, report) -> int:  # noqa: ANN001
    report(value)
    return 2 * value


def test_results_events_and_errors_come_back_to_this_process() -> None:
    events: list[tuple[int, int]] = []
    results = run_side_by_side({k: (_doubles, (k,)) for k in (1, 2, 3)}, workers=2,
                               on_event=lambda key, event: events.append((key, event)))  # fmt: skip
    assert results == {1: 2, 2: 4, 3: 6} and sorted(events) == [(1, 1), (2, 2), (3, 3)]
    with pytest.raises(IntrudimError, match="job 2 refused its input"):
        run_side_by_side({k: (_fails, (k,)) for k in (1, 2, 3)}, workers=2)
    with pytest.raises(IntrudimError, match="job 2 refused its input"):  # one after the other: the same error
        run_side_by_side({k: (_fails, (k,)) for k in (1, 2, 3)}, workers=1)


def test_continual_methods_side_by_side_equal_one_after_the_other(tiny_bert: Path, tmp_path: Path) -> None:  # noqa: F811
    from intrudim.experiments.continual import run_continual

    calls: list[tuple] = []
    alone = run_continual(continual_config(tiny_bert), tmp_path / "alone", progress=False)
    beside = run_continual(continual_config(tiny_bert), tmp_path / "beside", progress=False, workers=2, device="cpu",
                           on_step=lambda *call: calls.append(call))  # fmt: skip
    for label in ("r-2", "full"):
        assert beside.accuracy_matrix(label) == alone.accuracy_matrix(label)
        assert beside.intruders(label) == alone.intruders(label)
    assert sorted(calls) == sorted((label, step, 6) for label in ("r-2/stage-1-sentiment", "r-2/stage-2-topic",
                                   "full/stage-1-sentiment", "full/stage-2-topic") for step in range(1, 7))  # fmt: skip
