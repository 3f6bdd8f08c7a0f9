"""The scripts read what main.py writes: a run folder, a checkpoint inside one, or a model folder; they
refuse a model they cannot sample from its config, before torch is even imported; ``--help`` imports
neither torch nor the models; hints name things that exist."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO
from helpers.checkpoints import build_checkpoint
from helpers.scripts import load_script as script
from ldm.scripting import inputs

TRAIN = REPO / "tests" / "configs" / "train"
SCRIPTS = sorted(p.stem for p in (REPO / "scripts").glob("*.py"))
QUIET = ["lightning.trainer.max_steps=2", "lightning.callbacks.image_logger.params.disabled=true"]


def train_run(root: Path, config: str) -> Path:
    """A main.py run folder of a tiny config trained for 2 steps."""
    from main import main

    main(["-b", str(TRAIN / config), "-t", "--no-test", "-l", str(root), "--accelerator", "cpu", *QUIET])
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def uncond_run(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("uncond"), "ldm_uncond_tiny.yaml")


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("cond"), "ldm_cond_tiny.yaml")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --------------------------------------------------------------------------------------------------
# Finding checkpoint and config
# --------------------------------------------------------------------------------------------------


def test_find_model_files_in_a_run_folder(uncond_run):
    last = uncond_run / "checkpoints" / "last.ckpt"
    for given in (uncond_run, uncond_run / "checkpoints", last):
        files = inputs.find_model_files(given)
        assert files.ckpt == last and files.folder == uncond_run and files.kind == "run"
        assert [p.name.endswith("-project.yaml") for p in files.configs] == [True]
    other = next((uncond_run / "checkpoints").glob("epoch=*.ckpt"), None)
    if other is not None:  # a top-k checkpoint of the same run finds the same configs
        assert inputs.find_model_files(other).configs == files.configs


def test_find_model_files_in_a_model_folder_and_errors(tmp_path, uncond_run):
    folder = tmp_path / "models" / "ldm" / "mine"
    folder.mkdir(parents=True)
    shutil.copy(uncond_run / "checkpoints" / "last.ckpt", folder / "model.ckpt")
    (folder / "config.yaml").write_text("model: {target: x}\n")
    for given in (folder, folder / "model.ckpt"):
        files = inputs.find_model_files(given)
        assert (files.ckpt, files.configs, files.kind) == (folder / "model.ckpt", (folder / "config.yaml",), "folder")
    explicit = tmp_path / "other.yaml"
    explicit.write_text("model: {target: y}\n")
    assert inputs.find_model_files(folder, explicit).configs == (explicit,)

    with pytest.raises(FileNotFoundError, match=r"--ckpt: .*models/ldm/absent does not exist\. Fetch it with "
                                                r"`bash scripts/download_models.sh absent`"):
        inputs.find_model_files(tmp_path / "models" / "ldm" / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a main.py run folder .* nor a model folder"):
        inputs.find_model_files(tmp_path / "empty")
    (folder / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="no config.yaml beside .*model.ckpt.*pass --config"):
        inputs.find_model_files(folder / "model.ckpt")


# --------------------------------------------------------------------------------------------------
# sample_diffusion.py on main.py runs
# --------------------------------------------------------------------------------------------------


def test_sample_diffusion_samples_a_run_folder_into_it_or_into_logdir(uncond_run, tmp_path):
    argv = ["-n", "2", "--batch_size", "2", "-c", "2", "-e", "0.0", "--device", "cpu"]
    written = script("sample_diffusion").main(["-r", str(uncond_run), *argv])
    (out,) = (uncond_run / "samples" / f"{2:08}").iterdir()  # the run's last.ckpt is at step 2
    assert len(list((out / "img").glob("*.png"))) == 2 and (out / "numpy" / "2x16x16x3-samples.npz").is_file()
    assert all(uncond_run in p.parents for p in written)
    assert not (uncond_run / "checkpoints" / "samples").exists()

    script("sample_diffusion").main(["-r", str(uncond_run / "checkpoints" / "last.ckpt"), "-l", str(tmp_path), *argv])
    (out,) = (tmp_path / uncond_run.name / "samples" / f"{2:08}").iterdir()
    assert len(list((out / "img").glob("*.png"))) == 2


def test_scripts_report_the_thread_count(uncond_run, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "sample_diffusion.py"), "-r", str(uncond_run),
                           "-n", "1", "--batch_size", "1", "-c", "2", "-l", str(tmp_path), "--threads", "1"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CPU threads: 1 (from --threads; set with --threads N or OMP_NUM_THREADS)" in proc.stderr


def test_sample_diffusion_refuses_a_conditional_run_before_importing_torch(cond_run):
    code = ("import runpy, sys\n"
            f"sys.argv = ['sample_diffusion.py', '-r', {str(cond_run)!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(REPO / 'scripts' / 'sample_diffusion.py')!r}, run_name='__main__')\n"
            "finally:\n"
            "    print('torch imported:', 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "torch imported: False" in proc.stdout
    assert ("sample_diffusion.py samples models conditioned on nothing (unconditional); this one is conditioned "
            "on 'class_label' (model.params.cond_stage_key); sample it with scripts/sample_cin.py") in proc.stderr


@pytest.mark.parametrize("name", ["txt2img", "superres", "knn2img"])
def test_scripts_take_a_run_folder_as_ckpt_and_refuse_other_models(name, cond_run, tmp_path, monkeypatch):
    """--ckpt <run folder> finds the run's config (a class-conditional model here): the scripts for other
    conditionings refuse it from that config, naming the script that samples it, before loading."""
    import ldm.scripting.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "low.png")
    extra = {"superres": ["--input", str(tmp_path / "low.png")]}.get(name, [])
    with pytest.raises(ValueError, match=rf"{name}.py samples models conditioned on .*; this one is conditioned on "
                                         rf"'class_label' .*sample it with scripts/sample_cin.py"):
        script(name).main(["--ckpt", str(cond_run), "--outdir", str(tmp_path / "out"), *extra])


# --------------------------------------------------------------------------------------------------
# --help and the shared options
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCRIPTS + ["../main"])
def test_help_imports_neither_torch_nor_the_models(name):
    path = REPO / "scripts" / f"{name}.py"
    code = ("import runpy, sys\n"
            f"sys.argv = [{str(path)!r}, '--help']\n"
            "try:\n"
            f"    runpy.run_path({str(path)!r}, run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "heavy = sorted(m for m in ('torch', 'pytorch_lightning', 'transformers', 'ldm.models') if m in sys.modules)\n"
            "print('heavy:', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "heavy: []" in proc.stdout, proc.stdout[-2000:]


# --------------------------------------------------------------------------------------------------
# Hints that name what exists
# --------------------------------------------------------------------------------------------------


def test_img2img_missing_init_img_asks_for_an_image(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "tests" / "configs" / "tiny-cin.yaml").read_text())
    with pytest.raises(FileNotFoundError) as err:
        script("img2img").main(["--init_img", str(tmp_path / "sketch.png"), "--class_label", "1",
                                "--config", str(config), "--ckpt", str(tmp_path / "model.ckpt")])
    message = str(err.value)
    assert "--init_img not found" in message and "image file" in message and "main.py" not in message


def test_null_class_comes_from_the_config():
    model = OmegaConf.create({"params": {"ucg_class": 6}})
    assert inputs.null_class(model, 7) == 6
    assert inputs.null_class(OmegaConf.create({"params": {}}), 1001) == 1000


def test_sample_cin_uses_the_configs_null_class(tmp_path):
    """With ``ucg_class`` in the config (the label its training dropped to), sample_cin guides with that
    class, exactly as with --uncond_class given; the last class gives other images."""
    import numpy as np
    from PIL import Image

    config, ckpt = build_checkpoint("tiny-cin.yaml", tmp_path / "model", {"model.params.ucg_class": 7})

    def grid(*extra: str) -> np.ndarray:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        script("sample_cin").main(["--classes", "25", "--n_samples_per_class", "1", "--ddim_steps", "2",
                                   "--scale", "3.0", "--outdir", str(out), "--ckpt", str(ckpt), "--device", "cpu",
                                   *extra])
        return np.array(Image.open(out / "grid-0000.png"))

    from_config = grid()
    assert np.array_equal(from_config, grid("--uncond_class", "7"))
    assert not np.array_equal(from_config, grid("--uncond_class", "1000"))


def test_retrieval_hint_names_the_flag_of_the_script(tmp_path):
    from ldm.retrieval import load_database

    with pytest.raises(FileNotFoundError) as err:
        load_database(tmp_path, flag="--database")
    message = str(err.value)
    assert "--database at a folder" in message and "--database_root" not in message and "README" not in message
    assert "https://ommer-lab.com/files/rdm/artbench_databases.zip" in message


# --------------------------------------------------------------------------------------------------
# Download scripts: the reason of a failure, and nothing left behind
# --------------------------------------------------------------------------------------------------


def _download_one(tmp_path: Path, url: str, file: str) -> subprocess.CompletedProcess:
    folder = tmp_path / "models" / "ldm" / "new_model"
    cmd = (f"set -euo pipefail; source {REPO / 'scripts' / 'download_common.sh'}; "
           f"download_one new_model {url} {file} {folder} {tmp_path / 'config.yaml'}")
    return subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("bash") is None, reason="the download scripts are bash scripts")
def test_failed_download_says_why_and_leaves_no_folder(tmp_path):
    proc = _download_one(tmp_path, "http://127.0.0.1:9/model.zip", "model.zip")  # port 9: nothing listens
    assert proc.returncode == 1
    assert "Connection refused" in proc.stderr or "Failed to connect" in proc.stderr, proc.stderr
    assert "download of http://127.0.0.1:9/model.zip failed" in proc.stderr
    assert not (tmp_path / "models" / "ldm" / "new_model").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="the download scripts are bash scripts")
def test_broken_archive_is_reported_and_removed(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "model.zip").write_bytes(b"this is not a zip archive")
    server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"], cwd=served,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 12345 (...)"
        port = int(line.split(" port ")[1].split()[0])
        proc = _download_one(tmp_path, f"http://127.0.0.1:{port}/model.zip", "model.zip")
        missing = _download_one(tmp_path, f"http://127.0.0.1:{port}/absent.zip", "model.zip")
    finally:
        server.kill()
        server.wait()
    assert proc.returncode == 1 and "is not a valid zip archive" in proc.stderr, proc.stderr
    assert not (tmp_path / "models" / "ldm" / "new_model").exists()
    assert missing.returncode == 1 and "404" in missing.stderr, missing.stderr
    assert "the server answered with an error" in missing.stderr or "curl exit status 22" in missing.stderr


# --------------------------------------------------------------------------------------------------
# Installation files
# --------------------------------------------------------------------------------------------------


def _setup_kwargs() -> dict:
    """The literal keyword arguments of setup() in setup.py."""
    import ast

    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in
            ("name", "python_requires", "install_requires", "extras_require")}


def test_environment_yaml_creates_the_package_env():
    """What `conda env create -f environment.yaml` needs: a name, channels, a Python that setup.py
    accepts, pip, and a pip section that installs this package with extras that setup.py defines."""
    import re

    import yaml
    from packaging.specifiers import SpecifierSet

    env = yaml.safe_load((REPO / "environment.yaml").read_text())
    setup = _setup_kwargs()
    assert set(env) <= {"name", "channels", "dependencies"} and env["name"] and env["channels"]
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    version = re.fullmatch(r"python\s*=+\s*([\d.]+)\*?", python).group(1)
    assert version in SpecifierSet(setup["python_requires"]), (python, setup["python_requires"])
    assert "pip" in deps
    (pip,) = [d["pip"] for d in deps if isinstance(d, dict)]
    local = [line for line in pip if re.fullmatch(r"-e \.(\[[\w,]+\])?", line)]
    assert local, f"the pip section must install this package (-e .); got {pip}"
    extras = re.findall(r"\[([\w,]+)\]", local[0])
    assert all(e in setup["extras_require"] for group in extras for e in group.split(","))


def test_cpu_builds_of_torch_satisfy_the_requirements():
    """The README's CPU-only install puts torch from PyTorch's CPU index first (versions like
    2.5.1+cpu); `pip install -e .` must then keep it rather than fetch the CUDA build."""
    from packaging.requirements import Requirement

    reqs = {Requirement(r).name: Requirement(r) for r in _setup_kwargs()["install_requires"]}
    for name, version in (("torch", "2.5.1+cpu"), ("torchvision", "0.20.1+cpu")):
        assert reqs[name].specifier.contains(version), (name, str(reqs[name].specifier))
