"""The sampler study and the demo evaluation's pieces on a tiny class-conditional model made here: the study
covers every registered sampler, counts model evaluations, resumes, and draws its plot; class samples
are reproducible by seed; the shapes classifier's predictions map colour and shape to classes."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from ldm.data.synthetic import CLASSES
from ldm.evaluation import shapes
from ldm.evaluation.demo_eval import count_model_calls, sample_classes, score_samples
from ldm.evaluation.study import plot_guidance, plot_study, run_study, study_points
from ldm.models.diffusion.sampling import SAMPLERS
from ldm.util import instantiate_from_config


@pytest.fixture(scope="module")
def tiny_cin():
    config = OmegaConf.load(REPO / "tests" / "configs" / "tiny-cin.yaml")
    torch.manual_seed(0)
    model = instantiate_from_config(config.model).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_study_points_cover_the_registry():
    points = study_points(None, (5, 10), ddpm_steps=1000)
    assert {name for name, _, _ in points} == set(SAMPLERS)
    assert ("ddpm", 1000, 1.0) in points and ("ddpm", 5, 1.0) not in points
    assert ("ddim", 5, 1.0) in points and ("ddim", 10, 1.0) in points
    sweep = study_points(["ddim", "ddpm"], (5,), ddpm_steps=1000, scales=(1.0, 4.0))
    assert sweep == [("ddim", 5, 1.0), ("ddim", 5, 4.0), ("ddpm", 1000, 1.0), ("ddpm", 1000, 4.0)]
    with pytest.raises(ValueError, match="unknown samplers"):
        study_points(["ddim", "euler_magic"], (5,), 1000)


def test_sample_classes_counts_calls_and_repeats_by_seed(tiny_cin):
    images, labels, nfe = sample_classes(tiny_cin, null_class=1000, sampler="ddim", steps=4, n_per_class=2,
                                         scale=2.0, seed=3, batch_size=5, num_classes=3, progress=False)
    assert images.shape[0] == 6 and labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert nfe == 4  # guided steps batch both branches into one call
    again, _, _ = sample_classes(tiny_cin, 1000, "ddim", 4, 2, 2.0, seed=3, batch_size=5, num_classes=3,
                                 progress=False)
    torch.testing.assert_close(images, again)
    _, _, nfe_plms = sample_classes(tiny_cin, 1000, "plms", 4, 1, 2.0, num_classes=2, progress=False)
    assert nfe_plms == 5  # PLMS spends one extra evaluation on its first step
    with count_model_calls(tiny_cin) as calls:
        pass
    assert calls == [0] and "apply_model" not in vars(tiny_cin)


def test_run_study_resumes_and_plots(tmp_path):
    scored = []

    def score(name, steps, scale):
        scored.append((name, steps, scale))
        if name == "plms" and steps == 1:
            raise ValueError("too few steps")
        return {"fd": 10.0 / steps + scale, "accuracy": 1 - 1 / (steps + scale), "model_evaluations": steps}

    points = [("ddim", 1, 3.0), ("ddim", 4, 3.0), ("plms", 1, 3.0), ("plms", 4, 3.0)]
    out = tmp_path / "study.json"
    settings = {"seed": 0}
    run_study(score, points[:2], out, settings)
    study = run_study(score, points, out, settings)
    assert scored == points  # the first two were not scored again
    assert [r.get("error") for r in study["results"]] == [None, None, "too few steps", None]
    assert study["results"][1] == {"sampler": "ddim", "steps": 4, "scale": 3.0, "fd": 5.5, "accuracy": 1 - 1 / 7,
                                   "model_evaluations": 4}
    assert json.loads(out.read_text()) == study
    png = plot_study(study, tmp_path / "study.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # more guidance scales for the same settings: only the new points are scored
    sweep = [("ddim", 4, s) for s in (1.0, 3.0, 6.0)]
    study = run_study(score, sweep, out, settings)
    assert scored[4:] == [("ddim", 4, 1.0), ("ddim", 4, 6.0)]
    assert sorted(r["scale"] for r in study["results"] if r["sampler"] == "ddim" and r["steps"] == 4) == [1.0, 3.0, 6.0]
    png = plot_guidance(study, tmp_path / "guidance.png", floor=0.5, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_study(study, tmp_path / "both.png").is_file()  # a line per sampler and scale
    run_study(score, points, out, {"seed": 1})  # other settings: starts afresh
    assert len(scored) == 10


def test_predict_maps_colour_and_shape_to_classes():
    model = shapes.ShapesClassifier(width=8)
    with torch.no_grad():  # a classifier that says "green" and "triangle" for everything
        for head, index in ((model.colour_head, shapes.COLOUR_NAMES.index("green")),
                            (model.shape_head, shapes.SHAPES.index("triangle"))):
            head.weight.zero_()
            head.bias.zero_()
            head.bias[index] = 1.0
    x = torch.zeros(4, 3, 16, 16)
    assert shapes.predict(model, x, CLASSES).tolist() == [CLASSES.index("green triangle")] * 4
    assert shapes.predict(model, x, ("red circle", "blue square")).tolist() == [-1] * 4
    # the most probable of the given classes by joint colour and shape: green square beats red circle
    assert shapes.classify(model, x, ("red circle", "green square"))["label"].tolist() == [1] * 4
    images, labels = shapes.real_images(12, "validation", size=16)
    wide = shapes.ShapesClassifier(width=8)
    result = score_samples(wide, images[:12].repeat(3, 1, 1, 1), labels.repeat(3), images.repeat(3, 1, 1, 1))
    assert result["fd"] == pytest.approx(0.0, abs=1e-6) and 0.0 <= result["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="Frechet distance is not defined for 12 samples"):
        score_samples(wide, images, labels, images)


def test_demo_draws_its_grid_again_from_an_earlier_run(tmp_path):
    """scripts/demo.py --ldm_run skips training and samples the run's checkpoint (here: untrained weights)."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    with pytest.raises(SystemExit, match="--ldm_run .*nowhere: no checkpoints/last.ckpt"):
        demo.main(["--ldm_run", str(tmp_path / "nowhere"), "--outdir", str(tmp_path / "out")])
    config = OmegaConf.load(demo.LDM_CONFIG)
    config.model.params.first_stage_config.params.ckpt_path = None
    torch.manual_seed(0)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": instantiate_from_config(config.model).state_dict()}, run / "checkpoints" / "last.ckpt")
    grid = demo.main(["--ldm_run", str(run), "--outdir", str(tmp_path / "out"), "--n_per_class", "2",
                      "--ddim_steps", "2", "--threads", "1"])
    assert grid == tmp_path / "out" / "samples.png" and not (tmp_path / "out" / "logs").exists()  # nothing trained
    width, height = Image.open(grid).size
    assert height > 2.5 * width  # six class rows of two samples
