"""The model-zoo registry and scripts/reproduce.py: every row of both tables is registered; a row of a small
checkpoint made here is sampled and evaluated end to end, with the published figure printed beside the
measured one; a run killed midway (interrupted in-process, and, marked slow, SIGKILLed as a separate process)
resumes without sampling its finished batches again."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from helpers.evaluation import TinyFeatures, shapes_images, write_folder, write_standin_inception
from helpers.scripts import load_script
from ldm.evaluation import inception, zoo
from ldm.scripting import generate
from ldm.util import instantiate_from_config

SEED_README = REPO.parent / "shared" / "seed"


def test_registry_has_every_row_of_both_tables():
    registry = zoo.load_registry()
    assert [r["name"] for r in registry["first_stage"]] == [
        "vq-f4", "vq-f4-noattn", "vq-f8", "vq-f8-n256", "vq-f16", "kl-f4", "kl-f8", "kl-f16", "kl-f32"]
    assert [r["dataset"] for r in registry["ldm"]] == [
        "CelebA-HQ", "FFHQ", "LSUN-Churches", "LSUN-Bedrooms", "ImageNet", "ImageNet", "Conceptual Captions",
        "OpenImages", "OpenImages", "Landscapes", "Landscapes"]
    for row in registry["first_stage"] + registry["ldm"]:
        assert (REPO / row["config"]).is_file(), row["config"]
        assert row["checkpoint"].startswith(str(Path(row["config"]).parent))
        if row.get("reproducible", True) is False:
            assert row["reason"]
    assert zoo.find_row(registry, "ffhq256")["sampler"] == {"name": "ddim", "steps": 200, "eta": 1.0}
    assert zoo.find_row(registry, "lsun_churches256")["published"]["fid"] == 4.02
    with pytest.raises(ValueError, match="no row 'nope'.*celeba256"):
        zoo.find_row(registry, "nope")


def test_registry_figures_match_the_original_readme():
    files = sorted(SEED_README.glob("*.txt")) if SEED_README.is_dir() else []
    if not files:
        pytest.skip(f"the original README is not beside the checkout ({SEED_README})")
    text = files[0].read_text(encoding="utf-8")
    first = [line for line in text.splitlines() if re.match(r"\s*\| f=\d+, (VQ|KL)", line)]
    registry = zoo.load_registry()
    assert len(first) == len(registry["first_stage"])
    for line, row in zip(first, registry["first_stage"]):
        cells = [c.strip() for c in line.split("|")]
        assert float(cells[2]) == row["published"]["rfid"]
        assert cells[4].replace(" ", "").startswith(f"{row['published']['psnr']:.2f}+/-")
    assert "| 4.02 (4.02) | 2.72 | 0.64 | 0.52 |" in text.replace("  ", " ")


@pytest.fixture(scope="module")
def tiny_row(tmp_path_factory):
    """A registry with one unconditional row: a tiny LDM checkpoint made here, DDIM 3 steps."""
    root = tmp_path_factory.mktemp("zoo")
    config = OmegaConf.load(REPO / "tests" / "configs" / "tiny-uncond.yaml")
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    OmegaConf.save(config, root / "config.yaml")
    torch.save({"state_dict": model.state_dict(), "global_step": 7}, root / "model.ckpt")
    registry = {"first_stage": [], "ldm": [{
        "name": "tiny", "dataset": "shapes", "task": "Unconditional Image Synthesis", "model": "tiny LDM",
        "kind": "unconditional", "config": str(root / "config.yaml"), "checkpoint": str(root / "model.ckpt"),
        "sampler": {"name": "ddim", "steps": 3, "eta": 0.0},
        "published": {"fid": 5.11, "isc_mean": 3.29, "precision": 0.72, "recall": 0.49}}]}
    OmegaConf.save(OmegaConf.create(registry), root / "registry.yaml")
    weights = write_standin_inception(root / inception.INCEPTION_FILENAME)
    reference = write_folder(root / "reference", shapes_images(6, "validation", 0))
    return root / "registry.yaml", weights, reference


@pytest.fixture
def cheap_features(monkeypatch):
    """Inception's forward pass replaced by a cheap projection (the Inception path is tested elsewhere)."""
    monkeypatch.setattr(inception.InceptionFeatures, "model", property(lambda self: TinyFeatures()))


def reproduce(registry, weights, reference, outdir, *extra):
    return load_script("reproduce").main(
        ["tiny", "--registry", str(registry), "--reference", str(reference), "--inception_weights", str(weights),
         "--num_samples", "6", "--batch_size", "2", "--outdir", str(outdir), "--metrics", "isc,kid,prc",
         "--device", "cpu", "--no_progress", "--cache_dir", str(outdir) + "_cache", *extra])


def test_reproduce_end_to_end_prints_published_beside_measured(tiny_row, tmp_path, capsys, cheap_features):
    registry, weights, reference = tiny_row
    with pytest.raises(ValueError, match="Inception Score uses 10 splits"):  # found before any sampling
        reproduce(registry, weights, reference, tmp_path / "run0")
    assert not list((tmp_path / "run0").glob("samples/*.npz"))
    result = load_script("reproduce").main(
        ["tiny", "--registry", str(registry), "--reference", str(reference), "--inception_weights", str(weights),
         "--num_samples", "10", "--batch_size", "4", "--outdir", str(tmp_path / "run"), "--metrics", "isc,kid,prc",
         "--device", "cpu", "--no_progress", "--cache_dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("Inception Score"))
    assert f"{result['isc_mean']:.4f}" in line and line.rstrip().endswith("3.29")
    assert any(line.startswith("Precision") and line.rstrip().endswith("0.72") for line in out.splitlines())
    assert result["num_samples"] == 10 and result["published"]["fid"] == 5.11
    assert sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.npz")) == [
        "batch_000000.npz", "batch_000001.npz", "batch_000002.npz"]
    with np.load(tmp_path / "run" / "samples.npz") as data:
        assert data["arr_0"].shape == (10, 16, 16, 3) and data["arr_0"].dtype == np.uint8
    assert (tmp_path / "run" / "results.json").is_file()


def test_reproduce_resumes_after_a_kill_without_resampling(tiny_row, tmp_path, monkeypatch, cheap_features):
    registry, weights, reference = tiny_row
    real_run_sampler = generate.run_sampler
    calls = []

    def killed_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a kill midway looks like to the loop
        return real_run_sampler(*args, **kwargs)

    monkeypatch.setattr(generate, "run_sampler", killed_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        reproduce(registry, weights, reference, tmp_path / "run", "--num_samples", "8", "--metrics", "kid")
    samples = tmp_path / "run" / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["batch_000000.npz", "batch_000001.npz"]  # no partial file
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in samples.iterdir()}

    calls.clear()
    monkeypatch.setattr(generate, "run_sampler", lambda *a, **k: (calls.append(1), real_run_sampler(*a, **k))[1])
    reproduce(registry, weights, reference, tmp_path / "run", "--num_samples", "8", "--metrics", "kid")
    assert len(calls) == 2  # only the two missing batches
    for name, (mtime, data) in before.items():
        assert (samples / name).stat().st_mtime_ns == mtime and (samples / name).read_bytes() == data

    # the resumed samples are those of an uninterrupted run
    reproduce(registry, weights, reference, tmp_path / "fresh", "--num_samples", "8", "--metrics", "kid")
    with np.load(tmp_path / "run" / "samples.npz") as a, np.load(tmp_path / "fresh" / "samples.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])

    with pytest.raises(ValueError, match="holds a run with other settings.*batch_size"):
        reproduce(registry, weights, reference, tmp_path / "run", "--num_samples", "8", "--metrics", "kid",
                  "--batch_size", "4")


def test_reproduce_refuses_rows_it_cannot_sample(tmp_path):
    main = load_script("reproduce").main
    with pytest.raises(ValueError, match="classifier guidance"):
        main(["cin256-guided", "--reference", str(tmp_path)])
    with pytest.raises(ValueError, match="--prompts"):
        main(["text2img256", "--reference", str(tmp_path)])
    with pytest.raises(ValueError, match="layouts"):
        main(["layout2img-openimages256", "--reference", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match=r"models/ldm/celeba256/model.ckpt.*download_models.sh celeba256"):
        main(["celeba256", "--reference", str(tmp_path)])


def test_reproduce_checks_the_reference_size_before_sampling(tiny_row, tmp_path, monkeypatch):
    registry, weights, _ = tiny_row
    larger = write_folder(tmp_path / "ref32", shapes_images(4, "validation", 0, size=32))
    monkeypatch.setattr(zoo, "sample_row", lambda *a, **k: pytest.fail("sampled before the error"))
    with pytest.raises(ValueError, match=r"draws 16x16 images; the reference must have that size"):
        reproduce(registry, weights, larger, tmp_path / "run")


@pytest.mark.slow  # two launches of the script: 17 s of wall time on a quiet 2-core machine, 40 s on a busy one
def test_reproduce_killed_by_sigkill_resumes_without_resampling(tiny_row, tmp_path):
    """scripts/reproduce.py in its own process, SIGKILLed once its first batch file exists, then run again:
    the finished batches keep their files (same inode and modification time) and only the rest is sampled."""
    registry, weights, reference = tiny_row
    # the tiny row with 1000 training steps and 100 DDIM steps, so a batch takes a noticeable time to sample
    slow = tmp_path / "slow"
    slow.mkdir()
    config = OmegaConf.load(zoo.load_registry(registry)["ldm"][0]["config"])
    config.model.params.timesteps = 1000
    OmegaConf.save(config, slow / "config.yaml")
    torch.manual_seed(0)
    torch.save({"state_dict": instantiate_from_config(config.model).state_dict()}, slow / "model.ckpt")
    table = zoo.load_registry(registry)
    table["ldm"][0].update(config=str(slow / "config.yaml"), checkpoint=str(slow / "model.ckpt"),
                           sampler={"name": "ddim", "steps": 100, "eta": 0.0})
    OmegaConf.save(OmegaConf.create(table), slow / "registry.yaml")
    outdir, num_batches = tmp_path / "run", 4
    cmd = [sys.executable, str(REPO / "scripts" / "reproduce.py"), "tiny", "--registry", str(slow / "registry.yaml"),
           "--reference", str(reference), "--inception_weights", str(weights), "--num_samples", str(2 * num_batches),
           "--batch_size", "2", "--outdir", str(outdir), "--metrics", "kid", "--device", "cpu", "--no_progress",
           "--cache_dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    samples = outdir / "samples"

    def batches() -> list[Path]:
        return sorted(samples.glob("batch_*.npz")) if samples.is_dir() else []

    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not batches() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert batches(), f"no batch was written (exit status {proc.poll()}): {proc.communicate()[1].decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in batches()}
    assert 1 <= len(finished) < num_batches, f"killed too late: {sorted(finished)}"
    assert not (outdir / "results.json").exists() and not (outdir / "samples.npz").exists()

    rerun = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming: {len(finished)} of {num_batches} batches already sampled" in rerun.stderr
    assert [p.name for p in batches()] == [f"batch_{b:06d}.npz" for b in range(num_batches)]
    for name, stat in finished.items():  # not sampled again: the very same files
        assert ((samples / name).stat().st_ino, (samples / name).stat().st_mtime_ns) == stat, name
    with np.load(outdir / "samples.npz") as data:
        assert data["arr_0"].shape == (2 * num_batches, 16, 16, 3)
    assert json.loads((outdir / "results.json").read_text())["num_samples"] == 2 * num_batches
    assert "KID" in rerun.stdout and "5.11" in rerun.stdout  # the published FID beside the measured figures


def test_reproduce_clip_score_needs_a_text_row_and_writes_the_captions_of_text_rows(tiny_row, tmp_path, monkeypatch):
    registry, weights, reference = tiny_row
    monkeypatch.setattr(zoo, "sample_row", lambda *a, **k: pytest.fail("sampled before the error"))
    with pytest.raises(ValueError, match="clip_score scores samples against their captions; row tiny is not text"):
        reproduce(registry, weights, reference, tmp_path / "run", "--metrics", "clip_score")
    captions = zoo.sample_captions(["a cat", "a dog\nbarking"], 5)
    assert captions == ["a cat", "a dog\nbarking", "a cat", "a dog\nbarking", "a cat"]
    path = zoo.write_captions(captions, tmp_path / "samples.prompts.txt")
    assert path.read_text().splitlines() == ["a cat", "a dog barking", "a cat", "a dog barking", "a cat"]
