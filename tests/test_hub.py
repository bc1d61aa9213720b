"""Hub repo ids (intrudim.models.hub), offline: a real huggingface_hub cache on disk, built from folders
written by transformers' and peft's save_pretrained, read through huggingface_hub's own snapshot_download;
and huggingface_hub's own exception classes (with real httpx2 responses) turned into one-paragraph errors.

``build_hub_cache`` is the helper other tests import to put a saved folder into a Hub cache."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import (
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
    filter_repo_objects,
    hf_raise_for_status,
)

from intrudim.errors import HubError, IntrudimError
from intrudim.models import hub
from intrudim.models.hub import download_patterns, hub_snapshot, parse_hub_id
from intrudim.models.hub_errors import translate_hub_error

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".msgpack", ".h5")


def build_hub_cache(root: Path, repo_id: str, source_folder: Path, branch: str = "main") -> str:
    """Put every file under ``source_folder`` (e.g. a ``save_pretrained`` folder) into the Hugging Face
    cache at ``root`` (what ``HF_HUB_CACHE`` points to) as the model repo ``repo_id`` on ``branch``, in
    huggingface_hub's layout, and return the commit hash (40 hex digits derived from the files: the same
    folder gives the same commit, a changed one a new commit):

    - ``models--org--name/blobs/<sha256>``: each file's content;
    - ``models--org--name/snapshots/<commit>/<path>``: relative symlinks to those blobs (subfolders kept);
    - ``models--org--name/refs/<branch>``: the commit hash, without a newline (as huggingface_hub writes it);
    - ``models--org--name/trees/<commit>.json``: the repo's tree listing, as a download by huggingface_hub 2.x
      records it (it lets huggingface_hub tell a complete cached snapshot from a partial one offline).

    Calling it again for the same repo with another folder and another branch adds a second commit beside the
    first. Files can be deleted from the snapshot afterwards to imitate a partial download (before the first
    lookup: huggingface_hub keeps the tree listings it has read in memory, keyed by their path).
    """
    storage = Path(root) / f"models--{repo_id.replace('/', '--')}"
    source_folder = Path(source_folder)
    files = sorted(path for path in source_folder.rglob("*") if path.is_file())
    digests = {
        path.relative_to(source_folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in files
    }
    commit = hashlib.sha1(json.dumps(sorted(digests.items())).encode()).hexdigest()
    tree = {}
    for path in files:
        relative = path.relative_to(source_folder).as_posix()
        content = path.read_bytes()
        blob = storage / "blobs" / digests[relative]
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(content)
        link = storage / "snapshots" / commit / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        entry: dict = {"size": len(content), "blob_id": git_sha1}
        if relative.endswith(LFS_SUFFIXES):
            entry.update(lfs_sha256=digests[relative], lfs_size=len(content))
        tree[relative] = entry
    ref = storage / "refs" / branch
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    (storage / "trees").mkdir(exist_ok=True)
    (storage / "trees" / f"{commit}.json").write_text(
        json.dumps({"format_version": 1, "files": tree}, indent=1)
    )
    return commit


def hub_base_and_lora(tiny_models: dict[str, Path], root: Path) -> tuple[Path, Path]:
    """A Hub cache under ``root/hub`` holding the tiny LLaMA as ``org/base`` and a peft adapter of it that records
    ``org/base`` as its base (as an adapter trained on the Hub model does) as ``org/lora``. Returns (cache, the
    adapter's local folder)."""
    from conftest import write_peft_adapter

    adapter = write_peft_adapter(tiny_models["llama"], "llama", root / "adapter", strength=3.0, seed=7)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "org/base"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    cache = root / "hub"
    build_hub_cache(cache, "org/base", tiny_models["llama"])
    build_hub_cache(cache, "org/lora", adapter)
    return cache, adapter


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny LLaMA causal LM and a LoRA adapter on it (save_pretrained, safetensors), a second version of the
    model, and a model saved as a pickle (pytorch_model.bin) only."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "llama")
    (root / "llama" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))

    shutil.copytree(root / "llama", root / "llama-v2")
    (root / "llama-v2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))

    with warnings.catch_warnings():  # peft calls transformers' deprecated is_gradient_checkpointing
        warnings.simplefilter("ignore", FutureWarning)
        lora = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(root / "adapter")

    pickle_only = root / "pickle-only"
    pickle_only.mkdir()
    shutil.copy(root / "llama" / "config.json", pickle_only / "config.json")
    torch.save({"lm_head.weight": torch.zeros(100, 32)}, pickle_only / "pytorch_model.bin")
    return {name: root / name for name in ("llama", "llama-v2", "adapter", "pickle-only")}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, saved_folders) -> dict:
    """A real huggingface_hub cache at $HF_HUB_CACHE, offline ($HF_HUB_OFFLINE=1), with no token anywhere:
    org/tiny-llama (main and a branch v2 on a second commit), org/tiny-lora (a LoRA adapter) and
    org/pickle-only (pytorch_model.bin only)."""
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    return {
        "cache": cache,
        "main": build_hub_cache(cache, "org/tiny-llama", saved_folders["llama"]),
        "v2": build_hub_cache(cache, "org/tiny-llama", saved_folders["llama-v2"], branch="v2"),
        "adapter": build_hub_cache(cache, "org/tiny-lora", saved_folders["adapter"]),
        "pickle": build_hub_cache(cache, "org/pickle-only", saved_folders["pickle-only"]),
    }


def snapshot_of(cache: Path, repo_id: str, commit: str) -> Path:
    return cache.resolve() / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit


# --- parse_hub_id -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("org/name", ("org/name", None)),
        ("org/name@v1.0", ("org/name", "v1.0")),
        ("org/name@" + "a" * 40, ("org/name", "a" * 40)),
        ("sentence-transformers/all-MiniLM-L6-v2", ("sentence-transformers/all-MiniLM-L6-v2", None)),
        ("Qwen/Qwen2.5-0.5B@main", ("Qwen/Qwen2.5-0.5B", "main")),
        ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
    ],
)
def test_parse_hub_id_accepts_two_part_ids(spec, expected):
    assert parse_hub_id(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "minilm",
        "gpt2",
        "./x/y",
        "../x/y",
        "~/x",
        "~org/name",
        "/abs/path",
        "a/b/c",
        "x.safetensors",
        "org/model.safetensors",
        "org/pytorch_model.bin",
        "org/na me",
        "org/name@",
        "org/name@v 1",
        "org/na--me",
        "org/na..me",
        "-org/name",
        "org/name-",
        "org\\name",
        "org/name@a..b",
        "org/café",
        "",
        " org/name",
        "org/",
    ],
)
def test_parse_hub_id_rejects_what_is_not_a_hub_id(spec):
    assert parse_hub_id(spec) is None


# --- hub_snapshot on a real cache ---------------------------------------------------------------------------


def test_snapshot_of_the_default_branch_holds_the_saved_model(hub_cache, capfd):
    from safetensors import safe_open

    folder = hub_snapshot("org/tiny-llama", files="model")
    assert folder == snapshot_of(hub_cache["cache"], "org/tiny-llama", hub_cache["main"])
    assert {"config.json", "model.safetensors", "generation_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    with safe_open(folder / "model.safetensors", framework="pt") as weights:
        assert "model.layers.1.self_attn.q_proj.weight" in set(weights.keys())
    assert hub_snapshot("org/tiny-llama") == folder  # files="any"
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # nothing of huggingface_hub's leaks into the output


def test_revision_by_branch_and_by_commit_hash(hub_cache):
    cache, main, v2 = hub_cache["cache"], hub_cache["main"], hub_cache["v2"]
    assert main != v2
    on_branch = hub_snapshot("org/tiny-llama", "v2", files="model")
    assert on_branch == snapshot_of(cache, "org/tiny-llama", v2)
    assert (on_branch / "trainer_state.json").is_file()
    assert hub_snapshot("org/tiny-llama", main, files="model") == snapshot_of(cache, "org/tiny-llama", main)
    assert hub_snapshot("org/tiny-llama", v2) == on_branch
    assert hub_snapshot("org/tiny-llama", "main") == snapshot_of(cache, "org/tiny-llama", main)


def test_adapter_repo_resolves_for_adapter_and_any_but_not_for_model(hub_cache):
    folder = snapshot_of(hub_cache["cache"], "org/tiny-lora", hub_cache["adapter"])
    assert hub_snapshot("org/tiny-lora", files="adapter") == folder
    assert hub_snapshot("org/tiny-lora") == folder
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    with pytest.raises(HubError) as error:
        hub_snapshot("org/tiny-lora", files="model")
    message = str(error.value)
    assert "'org/tiny-lora'" in message and "PEFT adapter repo" in message and "\n" not in message


def test_model_repo_is_not_an_adapter(hub_cache):
    with pytest.raises(HubError, match=r"'org/tiny-llama'.*full model \(config.json\), not a PEFT adapter"):
        hub_snapshot("org/tiny-llama", files="adapter")


def test_pickle_only_repo_needs_allow_pickle(hub_cache):
    for files in ("model", "any"):
        with pytest.raises(HubError) as error:
            hub_snapshot("org/pickle-only", files=files)
        message = str(error.value)
        assert (
            "'org/pickle-only'" in message and "pytorch_model.bin" in message and "--allow-pickle" in message
        )
    folder = hub_snapshot("org/pickle-only", files="model", allow_pickle=True)
    assert (folder / "pytorch_model.bin").is_file()


def test_download_patterns_select_only_what_a_verb_reads():
    """What snapshot_download would fetch from a crowded repo, filtered by huggingface_hub itself."""
    repo = [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "vocab.txt",
        "merges.txt",
        "modules.json",
        "config_sentence_transformers.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "2_Dense/model.safetensors",
        "trainer_state.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "adapter_model.bin",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "model.ckpt",
        "weights.pt",
        "model.pth",
        "model.gguf",
        "onnx/model.onnx",
        "flax_model.msgpack",
        "tf_model.h5",
        "logo.png",
        "README.md",
        ".gitattributes",
        "original/consolidated.00.pth",
        "consolidated.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "training_args.bin",
        "last-checkpoint/model.safetensors",
    ]

    def fetched(files: str, allow_pickle: bool = False) -> set[str]:
        allow, ignore = download_patterns(files, allow_pickle=allow_pickle)
        return set(filter_repo_objects(repo, allow_patterns=allow, ignore_patterns=ignore))

    tokenizer = {
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "vocab.txt",
        "merges.txt",
    }
    model = tokenizer | {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "modules.json",
        "config_sentence_transformers.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "2_Dense/model.safetensors",
        "trainer_state.json",
    }
    adapter = tokenizer | {"adapter_config.json", "adapter_model.safetensors"}
    pickles = {
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "model.ckpt",
        "weights.pt",
        "model.pth",
        "adapter_model.bin",
    }
    assert fetched("model") == model
    assert fetched("adapter") == adapter
    assert fetched("any") == model | adapter
    assert fetched("model", allow_pickle=True) == model | pickles - {"adapter_model.bin"}
    assert fetched("adapter", allow_pickle=True) == adapter | {"adapter_model.bin"}
    assert fetched("any", allow_pickle=True) == model | adapter | pickles
    with pytest.raises(IntrudimError, match="files to fetch are one of model, adapter, any"):
        hub_snapshot("org/tiny-llama", files="weights")


def test_hf_home_is_the_fallback_cache(hub_cache, tmp_path, monkeypatch, saved_folders):
    home = tmp_path / "elsewhere"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(home))
    commit = build_hub_cache(home / "hub", "org/tiny-lora", saved_folders["adapter"])
    assert hub.hub_cache_dir() == home / "hub"
    assert hub_snapshot("org/tiny-lora", files="adapter") == snapshot_of(
        home / "hub", "org/tiny-lora", commit
    )


# --- errors from hub_snapshot -------------------------------------------------------------------------------


def test_not_cached_while_offline_names_repo_revision_and_the_fetch_command(hub_cache):
    with pytest.raises(HubError) as error:
        hub_snapshot("org/missing", "v1", files="adapter")
    message = str(error.value)
    assert isinstance(error.value, IntrudimError)
    assert "'org/missing' (revision 'v1')" in message
    assert "`hf download org/missing --revision v1`" in message and "unset HF_HUB_OFFLINE" in message
    assert str(hub_cache["cache"]) in message and "\n" not in message

    with pytest.raises(HubError, match=r"'org/missing' \(default branch\).*`hf download org/missing`"):
        hub_snapshot("org/missing")
    # a cached repo, but a branch that was never downloaded
    with pytest.raises(
        HubError, match=r"'org/tiny-llama' \(revision 'dev'\).*hf download org/tiny-llama --revision dev"
    ):
        hub_snapshot("org/tiny-llama", "dev")


def test_transformers_offline_counts_too(hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    with pytest.raises(HubError, match="unset TRANSFORMERS_OFFLINE"):
        hub_snapshot("org/missing")


def test_incomplete_cached_snapshot_is_named(hub_cache, saved_folders):
    """The tree listing says the repo has tokenizer_config.json; the snapshot lost it (a partial download)."""
    folder = snapshot_of(hub_cache["cache"], "org/tiny-llama", hub_cache["main"])
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(HubError) as error:
        hub_snapshot("org/tiny-llama", files="model")
    message = str(error.value)
    assert (
        "cached copy of the Hub repo 'org/tiny-llama' (default branch)" in message and "incomplete" in message
    )
    assert "`hf download org/tiny-llama`" in message and "unset HF_HUB_OFFLINE" in message


def test_partial_cache_without_a_tree_listing_says_how_to_fetch_the_rest(hub_cache):
    """A cache copied from an older huggingface_hub has no trees/: the snapshot is returned as it is, and a
    snapshot without the weights asked for is named, with the command that fetches the whole repo."""
    storage = hub_cache["cache"] / "models--org--tiny-llama"
    shutil.rmtree(storage / "trees")
    (storage / "snapshots" / hub_cache["v2"] / "model.safetensors").unlink()
    with pytest.raises(HubError) as error:
        hub_snapshot("org/tiny-llama", "v2", files="model")
    message = str(error.value)
    assert "'org/tiny-llama' (revision 'v2', commit " + hub_cache["v2"][:12] in message
    assert "hf download org/tiny-llama --revision v2" in message and "unset HF_HUB_OFFLINE" in message


def test_hub_started_offline_but_variable_unset_later(hub_cache, monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE once, when imported (tests/conftest.py sets it first): unset
    later, snapshot_download tries the network, is refused by huggingface_hub, and falls back to the cache."""
    from huggingface_hub import constants

    if not constants.is_offline_mode():
        pytest.skip("huggingface_hub was imported online; this test must not reach the network")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    expected = snapshot_of(hub_cache["cache"], "org/tiny-llama", hub_cache["main"])
    assert hub_snapshot("org/tiny-llama", files="model") == expected
    with pytest.raises(HubError, match=r"'org/missing'.*started in offline mode.*`hf download org/missing`"):
        hub_snapshot("org/missing")


# --- translate_hub_error on huggingface_hub's own exceptions ------------------------------------------------


def raised_for(status: int, url: str, **headers: str) -> HfHubHTTPError:
    """The exception huggingface_hub's own hf_raise_for_status raises for a real httpx2 response."""
    response = httpx2.Response(status, request=httpx2.Request("GET", url), headers=headers)
    with pytest.raises(HfHubHTTPError) as error:
        hf_raise_for_status(response)
    return error.value


def response(
    status: int, url: str = "https://huggingface.co/org/name/resolve/main/config.json"
) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", url))


@pytest.fixture
def no_token(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    ):
        monkeypatch.delenv(name, raising=False)


def check_paragraph(message: str, *parts: str) -> None:
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


def test_repository_not_found_says_typo_or_private(no_token):
    api = "https://huggingface.co/api/models/org/name/revision/main"
    error = raised_for(401, api)
    assert (
        type(error) is RepositoryNotFoundError
    )  # a 401 on the API is how the Hub answers "missing or private"
    translated = translate_hub_error(error, "org/name", None)
    assert isinstance(translated, HubError)
    check_paragraph(
        str(translated),
        "'org/name' (default branch) was not found",
        "typo",
        "private",
        "HF_TOKEN",
        "hf auth login",
    )
    error = raised_for(404, api, **{"X-Error-Code": "RepoNotFound"})
    check_paragraph(str(translate_hub_error(error, "org/name", "v1")), "'org/name' (revision 'v1')", "typo")
    direct = RepositoryNotFoundError("404 Client Error.", response=response(404))
    check_paragraph(str(translate_hub_error(direct, "org/name", None)), "not found", "private")


def test_revision_not_found(no_token):
    error = raised_for(
        404,
        "https://huggingface.co/api/models/org/name/revision/nope",
        **{"X-Error-Code": "RevisionNotFound"},
    )
    assert type(error) is RevisionNotFoundError
    check_paragraph(
        str(translate_hub_error(error, "org/name", "nope")),
        "'org/name' has no revision 'nope'",
        "branch, a tag or a full 40-character commit hash",
        "org/name@main",
    )


def test_gated_repo_is_caught_before_repository_not_found(no_token):
    error = raised_for(
        403, "https://huggingface.co/org/name/resolve/main/config.json", **{"X-Error-Code": "GatedRepo"}
    )
    assert isinstance(error, GatedRepoError) and isinstance(error, RepositoryNotFoundError)
    message = str(translate_hub_error(error, "org/name", "main"))
    check_paragraph(
        message,
        "'org/name' (revision 'main') is gated",
        "accept the conditions",
        "https://huggingface.co/org/name",
        "HF_TOKEN",
        "hf auth login",
    )
    assert "not found" not in message
    direct = GatedRepoError("403 Client Error.", response=response(403))
    check_paragraph(str(translate_hub_error(direct, "org/name", None)), "is gated")


def test_http_401_and_403_with_and_without_a_token(no_token, monkeypatch):
    for status in (401, 403):
        error = HfHubHTTPError(f"{status} Client Error.", response=response(status))
        check_paragraph(
            str(translate_hub_error(error, "org/name", "v1")),
            "'org/name' (revision 'v1')",
            f"HTTP {status}",
            "no token was found",
            "HF_TOKEN",
            "hf auth login",
        )
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    error = HfHubHTTPError("403 Client Error.", response=response(403))
    check_paragraph(
        str(translate_hub_error(error, "org/name", None)), "token in use was refused", "read access"
    )


def test_server_errors_and_network_errors_suggest_the_cache(no_token):
    error = HfHubHTTPError("503 Server Error.", response=response(503))
    check_paragraph(
        str(translate_hub_error(error, "org/name", None)), "'org/name'", "HTTP 503", "HF_HUB_OFFLINE=1"
    )
    request = httpx2.Request("GET", "https://huggingface.co/api/models/org/name")
    for network_error in (
        httpx2.ConnectError("[Errno 111] Connection refused", request=request),
        httpx2.ReadTimeout("The read operation timed out", request=request),
        ConnectionResetError("reset by peer"),
    ):
        message = str(translate_hub_error(network_error, "org/name", "v2"))
        check_paragraph(
            message,
            "could not reach the Hugging Face Hub",
            "'org/name' (revision 'v2')",
            "HF_HUB_OFFLINE=1",
            "cache",
        )


def test_local_entry_not_found(no_token, monkeypatch):
    """The same huggingface_hub class means 'offline and not cached' or 'network down and not cached'."""
    try:
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub") from (
            httpx2.ConnectError("[Errno -2] Name or service not known")
        )
    except LocalEntryNotFoundError as error:
        network_down = error
    check_paragraph(
        str(translate_hub_error(network_down, "org/name", "v1")),
        "could not reach the Hugging Face Hub",
        "not in the local cache",
        "`hf download org/name --revision v1`",
        "HF_HUB_OFFLINE=1",
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "on")
    offline = LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder")
    check_paragraph(
        str(translate_hub_error(offline, "org/name", "v1")),
        "'org/name' (revision 'v1')",
        "not in the local Hugging Face cache",
        "`hf download org/name --revision v1`",
        "unset HF_HUB_OFFLINE",
    )
    check_paragraph(
        str(translate_hub_error(OfflineModeIsEnabled("offline"), "org/name", None)), "`hf download org/name`"
    )


def test_invalid_id_and_anything_else(no_token):
    check_paragraph(
        str(translate_hub_error(HFValidationError("Repo id must use alphanumeric chars"), "a b/c", None)),
        "'a b/c' is not a valid Hugging Face Hub repo id",
    )
    check_paragraph(
        str(translate_hub_error(OSError(28, "No space left on device"), "org/name", None)),
        "'org/name'",
        "No space left on device",
    )
    same = HubError("already explained")
    assert translate_hub_error(same, "org/name", None) is same


# --- progress bars and warnings -----------------------------------------------------------------------------


def test_progress_switches_are_set_for_the_call_and_restored(monkeypatch):
    tqdm_module = importlib.import_module("huggingface_hub.utils.tqdm")
    monkeypatch.setattr(tqdm_module, "HF_HUB_DISABLE_PROGRESS_BARS", None)  # not pinned by the environment
    monkeypatch.setattr(tqdm_module, "progress_bar_states", {})  # the switches, restored after the test
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    disable_progress_bars()
    with hub._quiet_hub_call(progress=True) as tqdm_class:
        assert tqdm_class is None and not are_progress_bars_disabled()
        assert hub_logger.getEffectiveLevel() == logging.ERROR
    assert are_progress_bars_disabled() and hub_logger.level == level
    enable_progress_bars()
    disable_progress_bars("huggingface_hub.snapshot_download")  # one group off: kept as it was
    with hub._quiet_hub_call(progress=False) as tqdm_class:
        assert tqdm_class is None and are_progress_bars_disabled()
    assert not are_progress_bars_disabled()
    assert are_progress_bars_disabled("huggingface_hub.snapshot_download")
    with hub._quiet_hub_call(progress=True):
        assert not are_progress_bars_disabled("huggingface_hub.snapshot_download")
    assert are_progress_bars_disabled("huggingface_hub.snapshot_download")


def test_progress_shown_even_when_the_environment_pinned_bars_off(monkeypatch):
    """intrudim's CLI sets HF_HUB_DISABLE_PROGRESS_BARS=1 before huggingface_hub is imported: the public
    switch then only warns, so the download gets a bar class of its own."""
    tqdm_module = importlib.import_module("huggingface_hub.utils.tqdm")
    monkeypatch.setattr(tqdm_module, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    with hub._quiet_hub_call(progress=True) as tqdm_class:
        stream = io.StringIO()
        with tqdm_class(total=2, desc="Fetching 2 files", file=stream, name="huggingface_hub.x") as bar:
            assert not bar.disable
            bar.update(2)
        assert "Fetching 2 files" in stream.getvalue()
    with hub._quiet_hub_call(progress=False) as tqdm_class:
        assert tqdm_class is None  # already off
    monkeypatch.setattr(tqdm_module, "HF_HUB_DISABLE_PROGRESS_BARS", False)
    with hub._quiet_hub_call(progress=False) as tqdm_class:
        assert tqdm_class(total=1, file=io.StringIO()).disable
