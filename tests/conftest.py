"""Shared fixtures: where the parity data lives, the models of its cases, and the tolerance it is checked with;
torch on one thread; the tiny checkpoints the script tests sample from, the small class-conditional LDM
the sampler tests share and the stand-in Inception weights of the evaluation tests (module-scoped: each
test module gets its own). Plain helpers live in tests/helpers/."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers import REPO
from helpers.checkpoints import CONFIGS, build_checkpoint, write_bert_tokenizer
from helpers.evaluation import write_standin_inception


def _parity_root() -> Path | None:
    candidates = [os.environ.get("LDM_PARITY_DIR"), REPO.parent / "shared" / "parity", REPO / "tests" / "parity"]
    for c in candidates:
        if c and Path(c, "cases").is_dir():
            return Path(c)
    return None


PARITY = _parity_root()


def require_parity() -> Path:
    """The parity folder; skips outside CI when absent, fails under CI=true."""
    if PARITY is None:
        msg = ("parity data not found: looked in $LDM_PARITY_DIR, ../shared/parity beside the checkout "
               "and tests/parity")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI=true: the parity checks must run)")
        pytest.skip(msg)
    return PARITY


def load_case(name: str) -> dict:
    root = require_parity()
    return torch.load(root / "cases" / f"{name}.pt", weights_only=True, map_location="cpu")


def load_case_model(name: str) -> tuple[torch.nn.Module, dict]:
    """The model of the parity case ``name`` (built from its config, its state dict loaded strictly, in
    evaluation mode) and the case."""
    from ldm.util import instantiate_from_config

    case = load_case(name)
    model = instantiate_from_config(case["config"])
    model.load_state_dict(case["state_dict"], strict=True)
    return model.eval(), case


def assert_close(ours, ref, name: str = "") -> None:
    """The parity tolerance: rtol 1e-4, atol 1e-4 * max(1, |ref|max); integers exactly."""
    if isinstance(ref, (int, float)) and not isinstance(ref, bool):
        ref = torch.tensor(ref)
    if not isinstance(ours, torch.Tensor):
        ours = torch.as_tensor(ours)
    ours = ours.detach().cpu()
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    if not ref.is_floating_point():
        assert torch.equal(ours.to(ref.dtype), ref), f"{name}: integer values differ"
        return
    ours = ours.to(ref.dtype)
    atol = 1e-4 * max(1.0, ref.abs().max().item()) if ref.numel() else 1e-4
    diff = (ours - ref).abs().max().item() if ref.numel() else 0.0
    assert torch.allclose(ours, ref, rtol=1e-4, atol=atol), f"{name}: max abs diff {diff:.3g} (atol {atol:.3g})"


@pytest.fixture
def parity_case():
    return load_case


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test, and the earlier count restored after it (a script or
    main() run by another test on the same worker may have raised it). Tiny models run fastest that way
    on the shared CPUs. Modules use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def txt2img_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("txt2img")
    tokenizer = write_bert_tokenizer(root / "bert")
    return build_checkpoint("tiny-txt2img.yaml", root / "model",
                            {"model.params.cond_stage_config.params.tokenizer_path": str(tokenizer)})


@pytest.fixture(scope="module")
def uncond_ckpt(tmp_path_factory):
    return build_checkpoint("tiny-uncond.yaml", tmp_path_factory.mktemp("uncond") / "my_model")


@pytest.fixture(scope="module")
def cin_ckpt(tmp_path_factory):
    return build_checkpoint("tiny-cin.yaml", tmp_path_factory.mktemp("cin") / "model")


@pytest.fixture(scope="module")
def tiny_cin_ldm():
    """The model of tests/configs/tiny-cin.yaml (class-conditional, 20 training steps), weights perturbed,
    in evaluation mode, on one thread for the module."""
    from ldm.util import instantiate_from_config

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = instantiate_from_config(OmegaConf.load(CONFIGS / "tiny-cin.yaml").model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    yield model
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A stand-in Inception weights file (random weights in torch-fidelity's format)."""
    from ldm.evaluation import inception

    return write_standin_inception(tmp_path_factory.mktemp("inception") / inception.INCEPTION_FILENAME)


# Tests run two pytest workers on two cores: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)
