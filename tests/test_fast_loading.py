"""Loading a model for sampling: built with its parameters on the meta device and filled from the checkpoint
(no random initialization, one copy of the weights), giving the same model as building it and loading."""
from __future__ import annotations

import torch
from omegaconf import OmegaConf

from ldm import checkpoint as ldm_checkpoint
from ldm.scripting import loading
from test_scripts import build_checkpoint, write_bert_tokenizer


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

    def keep(path, map_location="cpu"):
        held["obj"] = real_load_checkpoint(path, map_location=map_location)
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
