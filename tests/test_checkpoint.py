"""ldm.checkpoint: Lightning-1.x checkpoints load without code execution; safetensors; atomic saving."""
from __future__ import annotations

import argparse
import builtins
import collections
import copy
import functools
import importlib
import io
import os
import pickle
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from ldm.checkpoint import (InvalidCheckpointError, StandIn, UnsafeCheckpointError, is_stand_in, load_checkpoint,
                            load_state_dict, main, restricted_pickle_module, save_checkpoint_atomic, to_builtin)

LIGHTNING_ROOTS = ("pytorch_lightning", "lightning", "lightning_fabric", "omegaconf", "argparse")


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def assert_same_model(state_dict) -> None:
    """A fresh model loads ``state_dict`` with strict=True and computes what the saved one computes."""
    ref = tiny_model().eval()
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(5, 3)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


@pytest.fixture
def lightning_classes(monkeypatch):
    """Local classes posing as Lightning ones, importable under those names only while saving."""
    class ModelCheckpoint:
        pass

    class AttributeDict(dict):
        pass

    fakes = {"pytorch_lightning.callbacks.model_checkpoint": ModelCheckpoint,
             "pytorch_lightning.utilities.parsing": AttributeDict}
    installed = []
    for module_name, cls in fakes.items():
        cls.__module__, cls.__qualname__ = module_name, cls.__name__
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in installed:
                monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
                installed.append(name)
        setattr(sys.modules[module_name], cls.__name__, cls)

    def remove():
        for name in installed:
            monkeypatch.delitem(sys.modules, name, raising=False)

    return types.SimpleNamespace(ModelCheckpoint=ModelCheckpoint, AttributeDict=AttributeDict, remove=remove)


@pytest.fixture
def forbid_lightning_imports(monkeypatch):
    """Call it to make any import of Lightning or omegaconf fail the test from then on."""
    real_import = builtins.__import__
    real_import_module = importlib.import_module

    def check(name):
        if name.split(".")[0] in LIGHTNING_ROOTS:
            raise AssertionError(f"the loader imported {name}")

    def guarded_import(name, *args, **kwargs):
        check(name)
        return real_import(name, *args, **kwargs)

    def guarded_import_module(name, *args, **kwargs):
        check(name)
        return real_import_module(name, *args, **kwargs)

    def forbid():
        monkeypatch.setattr(builtins, "__import__", guarded_import)
        monkeypatch.setattr(importlib, "import_module", guarded_import_module)

    return forbid


def lightning_checkpoint(classes) -> dict:
    model = tiny_model()
    from omegaconf import OmegaConf  # the real one: its pickles name omegaconf and typing internals

    cfg = OmegaConf.create({"target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                            "params": {"channels": 4, "scale": "${factor}", "keys": [1, 2]}, "factor": 0.18})
    hparams = classes.AttributeDict(lr=4.5e-6, cfg=cfg)
    hparams.extra = "attr"
    trained = tiny_model()  # a copy that takes one step, for a realistic optimizer state
    opt = torch.optim.AdamW(trained.parameters(), lr=1e-3)
    trained(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "epoch": 7,
        "global_step": 1234,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": model.state_dict(),
        "callbacks": {
            classes.ModelCheckpoint: {"monitor": "val/loss", "best_model_score": torch.tensor(0.25),
                                      "best_model_path": "/logs/x/checkpoints/epoch=6.ckpt", "dirpath": "/logs/x"},
            "ModelCheckpoint{'monitor': None}": {"current_score": None},
        },
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [{"base_lrs": [1e-3], "last_epoch": 3, "lr_lambdas": [{"warm_up_steps": [10]}]}],
        "hyper_parameters": hparams,
        "hparams_namespace": argparse.Namespace(base=["a.yaml"], gpus="0,"),
        "numpy": {"scalar": np.float64(2.5), "array": np.arange(6, dtype=np.int16).reshape(2, 3)},
        "misc": {"set": {1, 2}, "bytes": b"\x00\xff", "dtype": torch.float16, "size": torch.Size([2, 3])},
    }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_lightning_checkpoint_loads_with_stand_ins(tmp_path, lightning_classes, forbid_lightning_imports,
                                                   zip_format):
    path = tmp_path / "model.ckpt"
    torch.save(lightning_checkpoint(lightning_classes), path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    lightning_classes.remove()
    forbid_lightning_imports()

    ckpt = load_checkpoint(path)
    assert (ckpt["epoch"], ckpt["global_step"], ckpt["pytorch-lightning_version"]) == (7, 1234, "1.4.2")
    assert_same_model(ckpt["state_dict"])
    assert_same_model(load_state_dict(path))

    key = next(k for k in ckpt["callbacks"] if not isinstance(k, str))
    assert is_stand_in(key) and issubclass(key, StandIn)
    assert (key.__module__, key.__qualname__) == ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
    assert ckpt["callbacks"][key]["best_model_score"].item() == 0.25
    assert ckpt["callbacks"]["ModelCheckpoint{'monitor': None}"] == {"current_score": None}

    hp = ckpt["hyper_parameters"]
    assert type(hp).__qualname__ == "AttributeDict" and hp["lr"] == 4.5e-6 and hp.lr == 4.5e-6
    assert hp.extra == "attr"
    assert type(hp["cfg"]).__module__ == "omegaconf.dictconfig" and is_stand_in(hp["cfg"])
    assert to_builtin(hp)["cfg"] == {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "factor": 0.18,
                                     "params": {"channels": 4, "scale": "${factor}", "keys": [1, 2]}}
    ns = ckpt["hparams_namespace"]
    assert type(ns).__module__ == "argparse" and (ns.base, ns.gpus) == (["a.yaml"], "0,")

    state = ckpt["optimizer_states"][0]
    assert state["param_groups"][0]["lr"] == 1e-3 and torch.is_tensor(state["state"][0]["exp_avg"])
    assert ckpt["lr_schedulers"][0]["lr_lambdas"] == [{"warm_up_steps": [10]}]
    assert ckpt["numpy"]["scalar"] == 2.5 and ckpt["numpy"]["array"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert ckpt["misc"] == {"set": {1, 2}, "bytes": b"\x00\xff", "dtype": torch.float16, "size": torch.Size([2, 3])}


def test_loaded_checkpoint_with_stand_ins_can_be_saved_and_copied(tmp_path, lightning_classes):
    path = tmp_path / "a.ckpt"
    torch.save(lightning_checkpoint(lightning_classes), path)
    lightning_classes.remove()
    ckpt = load_checkpoint(path)
    ckpt.pop("optimizer_states")
    again = save_checkpoint_atomic(ckpt, tmp_path / "stripped.ckpt")
    reloaded = load_checkpoint(again)
    assert "optimizer_states" not in reloaded
    assert set(reloaded["callbacks"]) == set(ckpt["callbacks"])  # the same cached stand-in classes
    assert to_builtin(reloaded["hyper_parameters"]) == to_builtin(ckpt["hyper_parameters"])
    assert to_builtin(reloaded["hyper_parameters"])["cfg"]["params"]["channels"] == 4
    assert copy.deepcopy(ckpt["hparams_namespace"]).gpus == "0,"


class _Reduce:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    touch = f"touch {marker}"
    return {
        "os.system": (_Reduce(os.system, (touch,)), f"{os.system.__module__}.system"),
        "eval": (_Reduce(eval, (f"__import__('os').system({touch!r})",)), "builtins.eval"),
        "exec": (_Reduce(exec, (f"import os; os.system({touch!r})",)), "builtins.exec"),
        "Popen": (_Reduce(subprocess.Popen, (["touch", str(marker)],)), "subprocess.Popen"),
        "getattr": (_Reduce(getattr, ("x", "upper")), "builtins.getattr"),
        "import_module": (_Reduce(importlib.import_module, ("os",)), "importlib.import_module"),
        "partial": (_Reduce(functools.partial, (os.system, touch)), "functools.partial"),
        "torch.load": (_Reduce(torch.load, (str(marker),)), "torch.serialization.load"),
        "_load_from_bytes": (_Reduce(torch.storage._load_from_bytes, (b"",)), "torch.storage._load_from_bytes"),
        "numpy.load": (_Reduce(np.load, (str(marker),)), f"{np.load.__module__}.load"),
    }


@pytest.mark.parametrize("writer", ["zip", "legacy", "pickle2", "pickle0"])
@pytest.mark.parametrize("name", list(_payloads("m")))
def test_malicious_globals_are_refused(tmp_path, name, writer):
    marker = tmp_path / "pwned"
    payload, global_name = _payloads(marker)[name]
    path = tmp_path / "evil.ckpt"
    obj = {"payload": payload, "state_dict": {"w": torch.zeros(1)}}  # a plain pickle refuses tensors too
    if writer in ("zip", "legacy"):
        torch.save(obj, path, _use_new_zipfile_serialization=writer == "zip")
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(writer[-1])))
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert global_name in message and str(path) in message and message.startswith("refused")
    assert info.value.global_name == global_name
    assert isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict(path)
    assert not marker.exists()


def test_build_cannot_mutate_functions_or_classes(tmp_path):
    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    # GLOBAL torch._utils._rebuild_tensor_v2; BUILD (None, {"__defaults__": None}) would setattr the function
    attack = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__Ns\x86b.")
    (tmp_path / "a.pt").write_bytes(attack)
    with pytest.raises(UnsafeCheckpointError, match="BUILD"):
        load_checkpoint(tmp_path / "a.pt")
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults
    # a stand-in's state may not set special attributes such as __setstate__
    attack = (b"\x80\x02cpytorch_lightning.x\nY\n)\x81}X\x0c\x00\x00\x00__setstate__Nsb.")
    (tmp_path / "b.pt").write_bytes(attack)
    with pytest.raises(UnsafeCheckpointError, match="special attributes"):
        load_checkpoint(tmp_path / "b.pt")


def test_appends_do_not_call_attributes_set_by_the_file():
    module = restricted_pickle_module("in-memory")
    # a stand-in whose state sets an attribute "extend" (the standard unpickler would call it for APPENDS):
    # state that shadows a stand-in's methods is refused outright
    attack = (b"\x80\x02cpytorch_lightning.x\nY\n)\x81}X\x06\x00\x00\x00extendccollections\nOrderedDict\nsb"
              b"(K\x01K\x02e.")
    with pytest.raises(UnsafeCheckpointError, match=r"shadow its methods; got \['extend'\]"):
        module.loads(attack)
    # without it, APPENDS records the items on the stand-in
    loaded = module.loads(b"\x80\x02cpytorch_lightning.x\nY\n)\x81(K\x01K\x02e.")
    assert loaded._stand_in_items == [1, 2]
    # APPENDS onto anything but a list or a stand-in is refused
    with pytest.raises(UnsafeCheckpointError, match="APPENDS"):
        module.loads(b"\x80\x02ccollections\nOrderedDict\n)R(K\x01e.")


def test_reduce_only_calls_allow_listed_callables():
    # even if a callable reached the stack some other way (here: persistent_load), REDUCE refuses it
    module = restricted_pickle_module("in-memory")
    unpickler = module.Unpickler(io.BytesIO(b"\x80\x02X\x07\x00\x00\x00storage\x85QX\x04\x00\x00\x00true\x85R."))
    unpickler.persistent_load = lambda pid: os.system
    with pytest.raises(UnsafeCheckpointError, match="REDUCE"):
        unpickler.load()
    # and a persistent id that is not a tensor storage never reaches persistent_load
    unpickler = module.Unpickler(io.BytesIO(b"\x80\x02X\x01\x00\x00\x00xQ."))
    unpickler.persistent_load = lambda pid: pytest.fail("persistent_load was called")
    with pytest.raises(UnsafeCheckpointError, match="only tensor storages"):
        unpickler.load()


def test_torchscript_archive_is_refused(tmp_path):
    # torch.load hands a zip with constants.pkl to torch.jit.load, which runs the archive's code
    path = tmp_path / "scripted.pt"
    torch.save({"w": torch.ones(1)}, path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(f"{archive.namelist()[0].split('/')[0]}/constants.pkl", pickle.dumps(()))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        load_checkpoint(path)


def test_plain_state_dict_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    sd = tiny_model().state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    assert isinstance(load_state_dict(tmp_path / "plain.pt"), collections.OrderedDict)
    assert_same_model(load_state_dict(tmp_path / "plain.pt"))

    save_file(dict(sd), tmp_path / "w.safetensors")
    assert_same_model(load_state_dict(tmp_path / "w.safetensors"))
    assert set(load_checkpoint(tmp_path / "w.safetensors")) == set(sd)

    save_checkpoint_atomic(sd, tmp_path / "atomic.safetensors", metadata={"global_step": "5"})
    assert_same_model(load_state_dict(tmp_path / "atomic.safetensors"))


def test_convert_command(tmp_path, lightning_classes, capsys):
    torch.save(lightning_checkpoint(lightning_classes), tmp_path / "model.ckpt")
    lightning_classes.remove()
    assert main(["convert", str(tmp_path / "model.ckpt"), str(tmp_path / "model.safetensors")]) == 0
    assert_same_model(load_state_dict(tmp_path / "model.safetensors"))
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert f.metadata()["global_step"] == "1234"
    assert main(["info", str(tmp_path / "model.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "global_step: 1234" in out and "'lr': 4.5e-06" in out
    assert main(["convert", str(tmp_path / "missing.ckpt"), str(tmp_path / "x.safetensors")]) == 1


def test_missing_files_name_the_path_and_the_download_script(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        load_state_dict(tmp_path / "nothing.ckpt")
    with pytest.raises(FileNotFoundError, match="download_models.sh") as info:
        load_state_dict(tmp_path / "models" / "ldm" / "cin256" / "model.ckpt")
    assert "download_first_stages" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="download_first_stages.sh"):
        load_checkpoint(tmp_path / "models" / "first_stage_models" / "kl-f8" / "model.ckpt")


@pytest.mark.parametrize("damage", ["empty", "truncated_zip", "truncated_legacy", "garbage", "truncated_safetensors"])
def test_damaged_files_give_a_clear_error(tmp_path, damage):
    sd = tiny_model().state_dict()
    suffix = ".safetensors" if damage == "truncated_safetensors" else ".ckpt"
    path = tmp_path / f"model{suffix}"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 4)
    else:
        if damage == "truncated_safetensors":
            save_checkpoint_atomic(dict(sd), path)
        else:
            torch.save({"state_dict": sd}, path, _use_new_zipfile_serialization=damage == "truncated_zip")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidCheckpointError, match="model") as info:
        load_state_dict(path)
    assert str(path) in str(info.value)


def test_file_without_a_state_dict(tmp_path):
    torch.save({"epoch": 1, "weights": [1, 2]}, tmp_path / "x.ckpt")
    with pytest.raises(InvalidCheckpointError, match="no state dict"):
        load_state_dict(tmp_path / "x.ckpt")


def test_atomic_save_replaces_or_keeps_the_old_file(tmp_path):
    path = tmp_path / "sub" / "last.ckpt"
    save_checkpoint_atomic({"state_dict": {"w": torch.ones(2)}}, path)
    save_checkpoint_atomic({"state_dict": {"w": torch.full((2,), 2.0)}}, path)
    assert load_state_dict(path)["w"].tolist() == [2.0, 2.0]
    with pytest.raises(Exception):
        save_checkpoint_atomic({"state_dict": {"w": torch.zeros(2)}, "bad": lambda: None}, path)
    assert load_state_dict(path)["w"].tolist() == [2.0, 2.0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    with pytest.raises(ValueError, match="metadata"):
        save_checkpoint_atomic({}, tmp_path / "x.ckpt", metadata={"a": "b"})
