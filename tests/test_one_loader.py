"""One loader: every weight file the project reads goes through `ldm.checkpoint.load_checkpoint` (LPIPS and
Inception weights, the demo's shapes classifier, the scripts' models, ``init_from_ckpt``, Lightning's
``--resume``), one download hint knows every model-zoo folder, and one module writes and recognises the
temporary-file names. Hugging Face folders (tokenizers, CLIP, DINOv2), whose format transformers owns, go
through one function too, `ldm.checkpoint.pretrained.load_pretrained`."""
from __future__ import annotations

import ast
import os
import re
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from ldm.checkpoint import download_hint, load_checkpoint, remove_stale_temp_files, save_checkpoint_atomic
from ldm.checkpoint import state_dicts
from ldm.checkpoint.saving import temp_file_owner, temp_path

#: Calls that read a weight file; outside ``ldm/checkpoint/`` none may appear.
LOAD_CALLS = re.compile(r"\btorch\.load\(|\btorch\.jit\.load\(|\bload_file\(|\bsafe_open\(|\bpickle\.loads?\(")


@pytest.fixture
def reads(monkeypatch) -> list[bool]:
    """For every ``torch.load`` and safetensors ``load_file`` call from now on: whether
    `ldm.checkpoint.load_checkpoint` made it."""
    import safetensors.torch

    loader = state_dicts.load_checkpoint.__code__
    seen: list[bool] = []

    def inside_loader() -> bool:
        frame = sys._getframe(2)
        while frame is not None and frame.f_code is not loader:
            frame = frame.f_back
        return frame is not None

    def spy(real):
        def read(*args, **kwargs):
            seen.append(inside_loader())
            return real(*args, **kwargs)
        return read

    monkeypatch.setattr(torch, "load", spy(torch.load))
    monkeypatch.setattr(safetensors.torch, "load_file", spy(safetensors.torch.load_file))
    return seen


def assert_all_through_the_loader(reads: list[bool]) -> None:
    assert reads, "no weight file was read"
    assert all(reads), f"{reads.count(False)} of {len(reads)} reads bypassed ldm.checkpoint.load_checkpoint"


def tiny_autoencoder_config() -> dict:
    config = OmegaConf.load(REPO / "tests" / "configs" / "tiny-uncond.yaml").model.params.first_stage_config
    return OmegaConf.to_container(config)


def test_no_weight_file_is_read_outside_the_checkpoint_package():
    package = REPO / "ldm" / "checkpoint"
    sources = [*REPO.glob("ldm/**/*.py"), *REPO.glob("scripts/**/*.py"), *REPO.glob("benchmarks/**/*.py"),
               REPO / "main.py"]
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in sources if package not in path.parents
             for number, line in enumerate(path.read_text().splitlines(), 1) if LOAD_CALLS.search(line)]
    assert not found, "weight files read outside ldm.checkpoint:\n" + "\n".join(found)


def test_hugging_face_folders_are_read_only_through_load_pretrained():
    """Tokenizers, CLIP and DINOv2 folders: transformers' ``from_pretrained`` is called in one place,
    `ldm.checkpoint.pretrained.load_pretrained` (local files only, missing files named)."""
    package = REPO / "ldm" / "checkpoint"
    sources = [*REPO.glob("ldm/**/*.py"), *REPO.glob("scripts/**/*.py"), *REPO.glob("benchmarks/**/*.py"),
               REPO / "main.py"]
    calls = {}
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                calls.setdefault(path, []).append(node.lineno)
    outside = [f"{path.relative_to(REPO)}:{lines}" for path, lines in calls.items() if package not in path.parents]
    assert not outside, "from_pretrained called outside ldm.checkpoint: " + ", ".join(outside)
    assert list(calls) == [package / "pretrained.py"]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_lpips_weights(tmp_path, reads, suffix):
    from ldm.modules.losses import lpips

    save_checkpoint_atomic({"features.0.weight": torch.ones(2, 3, 3, 3)}, tmp_path / f"vgg16{suffix}")
    save_checkpoint_atomic({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, tmp_path / f"vgg{suffix}")
    assert set(lpips.load_vgg16_features(tmp_path / f"vgg16{suffix}")) == {"0.weight"}
    assert set(lpips.load_lpips_heads(tmp_path / f"vgg{suffix}")) == {"lin0.model.1.weight"}
    assert_all_through_the_loader(reads)


def test_inception_weights_also_for_torch_fidelitys_constructor(tmp_path, reads, monkeypatch):
    """torch-fidelity's constructor reads the file with torch.load(weights_only=False) itself; it gets the
    state dict that the project's loader read instead."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    from ldm.evaluation import inception

    path = tmp_path / inception.INCEPTION_FILENAME
    torch.save({"fc.weight": torch.full(inception.FC_SHAPE, 0.5)}, path)
    given = {}
    monkeypatch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict",
                        lambda self, state_dict: given.update(state_dict))
    inception.build_fidelity_inception(path, [inception.POOL_FEATURES])
    assert torch.equal(given["fc.weight"], torch.full(inception.FC_SHAPE, 0.5))
    assert fidelity.torch is torch
    assert_all_through_the_loader(reads)


def test_the_demo_shapes_classifier(tmp_path, reads):
    from ldm.evaluation import shapes

    settings = {**shapes.TRAIN_SETTINGS, "width": 8}
    model = shapes.ShapesClassifier(settings["width"])
    path = tmp_path / f"shapes-classifier-{shapes.settings_key(settings)}.pt"
    save_checkpoint_atomic({"state_dict": model.state_dict(), "accuracy": 0.99, "settings": settings}, path)
    loaded, accuracy = shapes.load_or_train(tmp_path, settings, progress=False)
    assert accuracy == 0.99
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert_all_through_the_loader(reads)


def test_the_scripts_model_loading_and_init_from_ckpt(tmp_path, reads):
    from ldm.scripting.loading import load_model
    from ldm.util import instantiate_from_config

    config = tiny_autoencoder_config()
    model = instantiate_from_config(config)
    torch.save({"state_dict": model.state_dict(), "global_step": 3}, tmp_path / "model.ckpt")
    for empty_init in (True, False):
        loaded, meta = load_model(OmegaConf.create({"model": config}), tmp_path / "model.ckpt", torch.device("cpu"),
                                  empty_init=empty_init)
        assert meta == {"global_step": 3}
    restored = instantiate_from_config({**config, "params": {**config["params"], "ckpt_path": str(tmp_path / "model.ckpt")}})
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), model.state_dict().values()))
    assert_all_through_the_loader(reads)


def test_lightning_resume_through_the_checkpoint_io(tmp_path, reads):
    import pytorch_lightning as pl
    from pytorch_lightning.demos.boring_classes import BoringModel

    from ldm.callbacks import AtomicCheckpointIO

    def trainer(max_steps: int) -> pl.Trainer:
        return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                          default_root_dir=tmp_path)

    first = trainer(1)
    first.fit(BoringModel())
    first.save_checkpoint(tmp_path / "last.ckpt")
    resumed = trainer(2)
    resumed.fit(BoringModel(), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.global_step == 2
    assert_all_through_the_loader(reads)


def model_zoo_folders() -> dict[str, tuple[str, str]]:
    """Each model-zoo folder (``models/<kind>/<name>``) that a download script fetches: (script, name)."""
    folders = {}
    text = (REPO / "scripts" / "download_models.sh").read_text()
    for name, folder in re.findall(r'^\s*"([^|"]+)\|[^|"]*\|[^|"]*\|(models/[^|"]+)"', text, flags=re.M):
        folders[folder] = ("scripts/download_models.sh", name)
    text = (REPO / "scripts" / "download_first_stages.sh").read_text()
    for name in re.search(r"^NAMES=\(([^)]*)\)", text, flags=re.M).group(1).split():
        folders[f"models/first_stage_models/{name}"] = ("scripts/download_first_stages.sh", name)
    return folders


def test_every_model_zoo_folder_gets_its_download_hint():
    folders = model_zoo_folders()
    shipped = {str(p.relative_to(REPO)) for kind in ("ldm", "first_stage_models") for p in (REPO / "models" / kind).iterdir()
               if p.is_dir()}
    assert "models/rdm/rdm768x768" in folders
    assert shipped <= set(folders), f"model folders no download script fetches: {sorted(shipped - set(folders))}"
    for folder, (script, name) in folders.items():
        assert download_hint(REPO / folder / "model.ckpt") == f"Fetch it with `bash {script} {name}`.", folder
    assert download_hint(REPO / "logs" / "run" / "checkpoints" / "last.ckpt") == ""


def test_the_loader_and_the_scripts_give_the_same_hint(tmp_path):
    from ldm.scripting.inputs import require_file

    missing = tmp_path / "models" / "rdm" / "rdm768x768" / "model.ckpt"
    hint = "Fetch it with `bash scripts/download_models.sh rdm768x768`."
    with pytest.raises(FileNotFoundError, match=re.escape(hint)):
        load_checkpoint(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(hint)):
        require_file(missing, "checkpoint")


def test_temporary_file_names_are_written_and_recognised_in_one_place(tmp_path):
    tmp = temp_path(tmp_path / "last.ckpt")
    assert tmp.parent == tmp_path and tmp.name.startswith(".last.ckpt.")
    assert temp_file_owner(tmp) == os.getpid()
    for name in ("last.ckpt", ".last.ckpt.tmp", ".last.ckpt.12.nothex00.tmp", ".12.abcdef01.tmp"):
        assert temp_file_owner(tmp_path / name) is None, name
    dead = os.getpid()
    while True:  # a process id that no process holds
        dead += 1
        try:
            os.kill(dead, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            continue
    stale = tmp_path / tmp.name.replace(f".{os.getpid()}.", f".{dead}.")
    stale.write_bytes(b"partial")
    tmp.write_bytes(b"being written")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert tmp.exists()
