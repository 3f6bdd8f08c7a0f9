"""Loading a model for sampling: built with its parameters on the meta device and filled from the checkpoint
(no random initialization, one copy of the weights, mapped from the file), giving the same model and the same
images as building it and loading the checkpoint read into memory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers.checkpoints import build_checkpoint, write_bert_tokenizer
from helpers.scripts import run_txt2img
from ldm import checkpoint as ldm_checkpoint
from ldm.scripting import loading


def _tiny_txt2img(tmp_path):
    tokenizer = write_bert_tokenizer(tmp_path / "bert")
    return build_checkpoint("tiny-txt2img.yaml", tmp_path / "model",
                            {"model.params.cond_stage_config.params.tokenizer_path": str(tokenizer)})


def test_empty_init_loading_gives_the_same_model_without_a_second_copy(tmp_path, monkeypatch):
    config_path, ckpt = _tiny_txt2img(tmp_path)
    config = OmegaConf.load(config_path)
    slow, _ = loading.load_model(config, ckpt, torch.device("cpu"), empty_init=False)

    held = {}
    real_load_checkpoint = ldm_checkpoint.load_checkpoint

    def keep(path, map_location="cpu", mmap=False):
        held["obj"] = real_load_checkpoint(path, map_location=map_location, mmap=mmap)
        return held["obj"]

    monkeypatch.setattr("ldm.checkpoint.load_checkpoint", keep)
    inits = []
    real_uniform = torch.nn.init.kaiming_uniform_
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_",
                        lambda t, *a, **k: inits.append(t.is_meta) or real_uniform(t, *a, **k))
    fast, meta = loading.load_model(config, ckpt, torch.device("cpu"))
    assert inits and all(inits), "random initialization ran on real memory"
    assert meta["epoch"] == 3

    slow_state, fast_state = slow.state_dict(), fast.state_dict()
    assert slow_state.keys() == fast_state.keys()
    for key in slow_state:
        assert torch.equal(slow_state[key], fast_state[key]), key
        assert not fast_state[key].is_meta, key
    # the checkpoint's tensors became the parameters: no second copy (convolutions of the channels-last
    # U-Net are the exception, they are put back in its memory format)
    stored = held["obj"]["state_dict"]
    shared = [k for k, p in fast.named_parameters() if p.data_ptr() == stored[k].data_ptr()]
    assert len(shared) > len(list(fast.parameters())) // 2
    # frozen parts stay frozen, trainable parts stay trainable
    for (name, p_slow), (_, p_fast) in zip(slow.named_parameters(), fast.named_parameters()):
        assert p_slow.requires_grad == p_fast.requires_grad, name
    # and the two give the same samples
    for model in (slow, fast):
        torch.manual_seed(0)
        with torch.no_grad():
            c = model.get_learned_conditioning(["a red circle"])
            x = torch.randn(1, model.channels, model.image_size, model.image_size)
            model._out = model.apply_model(x, torch.tensor([10]), c)
    assert torch.equal(slow._out, fast._out)


def _mapped_from(tensor: torch.Tensor, path) -> bool:
    """Whether the memory of ``tensor`` lies in a mapping of the file ``path`` (Linux /proc/self/maps)."""
    start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.untyped_storage().nbytes()
    target = os.path.realpath(path)
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(v, 16) for v in fields[0].split("-"))
        if low <= start and end <= high:
            return len(fields) == 6 and fields[5] == target
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc/self/maps")
def test_mapped_checkpoint_is_the_read_one_without_a_copy_and_leaves_the_file_alone(tmp_path):
    _, ckpt = _tiny_txt2img(tmp_path)
    stored = ckpt.read_bytes()
    read = ldm_checkpoint.load_checkpoint(ckpt)
    mapped = ldm_checkpoint.load_checkpoint(ckpt, mmap=True)
    assert {k: v for k, v in read.items() if k != "state_dict"} == \
        {k: v for k, v in mapped.items() if k != "state_dict"}
    assert list(read["state_dict"]) == list(mapped["state_dict"])
    for key, value in read["state_dict"].items():
        other = mapped["state_dict"][key]
        assert (other.dtype, other.shape, other.stride()) == (value.dtype, value.shape, value.stride()), key
        assert torch.equal(other, value), key
        assert _mapped_from(other, ckpt) and not _mapped_from(value, ckpt), key
    # the mapping is copy-on-write: changing a loaded tensor leaves the file as it was
    next(iter(mapped["state_dict"].values())).add_(1.0)
    del mapped
    assert ckpt.read_bytes() == stored


def test_txt2img_writes_the_same_images_from_a_mapped_checkpoint(tmp_path, monkeypatch):
    config, ckpt = _tiny_txt2img(tmp_path)
    run_txt2img(config, ckpt, tmp_path / "fast")
    real_load_model = loading.load_model
    plain = []

    def load_the_plain_way(config, ckpt, device, **options):  # random initialization, then the checkpoint read
        plain.append(ckpt)
        return real_load_model(config, ckpt, device, empty_init=False, **options)

    monkeypatch.setattr(loading, "load_model", load_the_plain_way)
    run_txt2img(config, ckpt, tmp_path / "plain")
    assert plain
    written = sorted(p.relative_to(tmp_path / "fast") for p in (tmp_path / "fast").rglob("*.png"))
    assert len(written) == 5  # four samples and the grid
    for name in written:
        assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


def test_ema_weights_are_ema_scope_without_copying_the_network(tmp_path):
    config_path, ckpt = build_checkpoint("tiny-superres.yaml", tmp_path / "model")
    model, _ = loading.load_model(OmegaConf.load(config_path), ckpt, torch.device("cpu"))
    assert model.use_ema
    before = {k: (v, v.clone()) for k, v in model.model.state_dict().items()}
    with torch.no_grad(), model.ema_scope():
        expected = {k: (v.clone(), v.stride()) for k, v in model.model.state_dict().items()}
    shadows = {b.data_ptr() for b in model.model_ema.buffers()}
    with torch.no_grad(), loading.ema_weights(model):
        inside = model.model.state_dict()
        for key, (value, stride) in expected.items():
            assert torch.equal(inside[key], value) and inside[key].stride() == stride, key
        assert any(not torch.equal(inside[k], before[k][1]) for k in inside)  # EMA weights differ from the raw ones
        shared = [k for k, v in inside.items() if v.data_ptr() in shadows]
        assert len(shared) > len(inside) // 2  # the EMA tensors themselves, not copies
    for key, (value, saved) in before.items():  # afterwards the raw weights, the same tensors, unchanged
        now = model.model.state_dict()[key]
        assert now.data_ptr() == value.data_ptr() and torch.equal(now, saved), key
