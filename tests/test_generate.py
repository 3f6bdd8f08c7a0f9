"""The one generation loop (``ldm.scripting.generate``) on a tiny class-conditional model made here: a seed
repeats its samples, a resumed subset of batches draws what the whole run draws, a sampler with fixed steps is
run by its registry entry and not by its name, and the demo evaluation, the model-zoo reproduction and
``scripts/sample_diffusion.py`` all draw through the loop."""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import torch

from helpers.checkpoints import build_checkpoint
from helpers.scripts import script
from ldm.evaluation import zoo
from ldm.evaluation.demo_eval import sample_classes
from ldm.sampler_registry import SAMPLERS, check_run_options, run_steps
from ldm.scripting import generate as gen
from ldm.scripting import inputs, loading, sampler_options

NULL_CLASS = 1000  # tiny-cin.yaml: the class trained as "no class"


@pytest.fixture(scope="module")
def cin_model(tmp_path_factory):
    config, ckpt = build_checkpoint("tiny-cin.yaml", tmp_path_factory.mktemp("cin"))
    model, _ = loading.load_model(inputs.load_config(config), ckpt, torch.device("cpu"))
    return model


def draw(model, sampler: str, steps: int | None, batches, eta: float = 0.5, seed: int | None = 7) -> list[np.ndarray]:
    """The uint8 images of ``batches``, class i mod 3 for sample i, guided at scale 2."""
    def conditioning(batch: gen.Batch):
        labels = torch.arange(batch.start, batch.start + batch.size) % 3
        return (model.get_learned_conditioning({"class_label": labels}),
                model.get_learned_conditioning({"class_label": torch.full_like(labels, NULL_CLASS)}))

    with torch.no_grad():
        return [out.uint8() for out in gen.generate(model, sampler, steps, batches, eta=eta, seed=seed,
                                                    conditioning=conditioning, scale=2.0, progress=False)]


def test_plan_batches():
    assert gen.plan_batches(5, 2) == [gen.Batch(0, 0, 2), gen.Batch(1, 2, 2), gen.Batch(2, 4, 1)]
    assert gen.plan_batches(4, 4) == [gen.Batch(0, 0, 4)]


def test_same_seed_same_samples_and_a_resumed_batch_is_the_whole_runs(cin_model):
    batches = gen.plan_batches(5, 2)
    first = draw(cin_model, "ddim", 3, batches)
    assert [a.shape for a in first] == [(2, 16, 16, 3), (2, 16, 16, 3), (1, 16, 16, 3)]
    assert all(a.dtype == np.uint8 for a in first)
    for a, b in zip(first, draw(cin_model, "ddim", 3, batches)):
        np.testing.assert_array_equal(a, b)
    torch.rand(10)  # the global generator moved on: batch 2 alone still draws with seed 7 + 2
    np.testing.assert_array_equal(draw(cin_model, "ddim", 3, batches[2:])[0], first[2])
    assert not np.array_equal(draw(cin_model, "ddim", 3, batches, seed=8)[0], first[0])

    torch.manual_seed(7)  # no seed rule: the global generator as the caller left it
    unseeded = draw(cin_model, "ddim", 3, batches[:1], seed=None)
    torch.manual_seed(7)
    np.testing.assert_array_equal(draw(cin_model, "ddim", 3, batches[:1], seed=None)[0], unseeded[0])


def test_fixed_steps_come_from_the_registry_entry(cin_model, monkeypatch):
    assert [name for name, spec in SAMPLERS.items() if spec.fixed_steps] == ["ddpm"]
    assert check_run_options("ddpm", eta=-1.0) == "ddpm"  # takes no eta, so none is checked
    with pytest.raises(ValueError, match="takes eta=0 only"):
        check_run_options("plms", eta=0.5)
    assert run_steps("ddpm", 5, 20) == 20 and run_steps("ddim", 5, 20) == 5

    calls = []

    class Spy:
        def sample(self, **kwargs):
            calls.append(kwargs)
            return torch.zeros(1), {}

    gen.run_sampler("ddpm", cin_model, 5, 1, (3, 8, 8), eta=0.3, sampler=Spy())
    gen.run_sampler("ddim", cin_model, 5, 1, (3, 8, 8), eta=0.3, sampler=Spy())
    assert calls[0]["S"] is None and "eta" not in calls[0]
    assert calls[1]["S"] == 5 and calls[1]["eta"] == 0.3

    # another name with the same entry is run the same way: callers read the field, not the name
    monkeypatch.setitem(SAMPLERS, "all_steps", dataclasses.replace(SAMPLERS["ddpm"]))
    opt = argparse.Namespace(sampler="all_steps", plms=False, vanilla_sample=False)
    assert sampler_options.resolve_sampler(opt, eta=0.7) == "all_steps"
    batches = gen.plan_batches(2, 2)
    np.testing.assert_array_equal(draw(cin_model, "all_steps", 999, batches, eta=0.7)[0],
                                  draw(cin_model, "ddpm", None, batches)[0])


def test_the_three_callers_draw_through_the_loop(cin_model, tmp_path, monkeypatch):
    decoded = []
    real_decode = gen.decode
    monkeypatch.setattr(gen, "decode", lambda model, z: (decoded.append(len(z)), real_decode(model, z))[1])

    sample_classes(cin_model, NULL_CLASS, "ddim", 2, n_per_class=1, batch_size=2, num_classes=3, progress=False)
    assert decoded == [2, 1]

    decoded.clear()
    row = {"name": "tiny", "kind": "class", "num_classes": 3, "sampler": {"name": "ddim", "steps": 2}}
    zoo.sample_row(cin_model, row, zoo.open_run(tmp_path / "zoo", {}), 3, 2, seed=0, progress=False)
    assert decoded == [2, 1]

    decoded.clear()
    _, ckpt = build_checkpoint("tiny-uncond.yaml", tmp_path / "uncond")
    script("sample_diffusion").main(["-r", str(ckpt), "-n", "3", "--batch_size", "2", "-c", "2", "-e", "0.0",
                                     "-l", str(tmp_path / "logs"), "--device", "cpu"])
    assert decoded == [2, 1]
