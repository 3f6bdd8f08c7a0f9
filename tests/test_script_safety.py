"""The sampling scripts with bad input (checkpoints, output folders, prompt files, masks, step counts) and
with several runs writing into one folder at once."""
from __future__ import annotations

import multiprocessing
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.checkpoints import CONFIGS
from helpers.scripts import forbid_model_loading, make_inpainting_pairs, script
from ldm.scripting import cli, outputs


def _run_script(name: str, argv: list[str], monkeypatch, capsys) -> str:
    """Run scripts/<name>.py as from the command line; returns its one-line error (exit status 1)."""
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    with pytest.raises(SystemExit) as info:
        cli.run_script(script(name).main)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------------ outputs


def _claim_many(folder: str, n: int, queue) -> None:
    queue.put([outputs.claim(folder, "{:04}.png".format, outputs.count_entries(folder))[0].name for _ in range(n)])


def test_claims_are_exclusive_across_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_many, args=(str(tmp_path), 25, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    names = [name for _ in procs for name in queue.get(timeout=60)]
    for p in procs:
        p.join()
    assert len(names) == 100 and len(set(names)) == 100, "two runs were given the same file"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_claims_skip_names_taken_since_the_folder_was_counted(tmp_path):
    (tmp_path / "0000.png").write_bytes(b"first run")
    (tmp_path / "0002.png").write_bytes(b"another run")
    start = outputs.count_entries(tmp_path)  # 2: the original numbering would overwrite 0002.png
    path, index = outputs.claim(tmp_path, "{:04}.png".format, start)
    assert (path.name, index) == ("0003.png", 3)
    assert (tmp_path / "0002.png").read_bytes() == b"another run"
    assert outputs.claim_unique(tmp_path / "0000.png").name == "0000-1.png"


def test_sample_folder_numbers_past_taken_names(tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "0001.png").write_bytes(b"taken")
    (tmp_path / "grid-0000.png").write_bytes(b"taken")
    folder = outputs.SampleFolder(tmp_path)
    assert (folder.next_sample, folder.next_grid) == (1, 1)  # the original's running numbers
    folder.save_samples(torch.rand(1, 3, 4, 4))
    (tmp_path / "samples" / "0003.png").write_bytes(b"taken since")
    folder.save_samples(torch.rand(2, 3, 4, 4))
    folder.save_grid(torch.rand(3, 3, 4, 4), nrow=3)
    assert [p.name for p in folder.summary.paths] == ["0002.png", "0004.png", "0005.png", "grid-0001.png"]
    assert (tmp_path / "samples" / "0001.png").read_bytes() == b"taken"
    assert (tmp_path / "samples" / "0003.png").read_bytes() == b"taken since"
    assert Image.open(tmp_path / "grid-0001.png").size == (3 * 4 + 4 * 2, 4 + 2 * 2)


def test_run_folders_started_in_the_same_second_differ(tmp_path):
    first = outputs.claim_dir(tmp_path / "samples" / "00000100" / "2026-01-01-00-00-00")
    second = outputs.claim_dir(tmp_path / "samples" / "00000100" / "2026-01-01-00-00-00")
    assert first != second and first.is_dir() and second.is_dir()


def test_txt2img_runs_into_one_folder_keep_every_sample(txt2img_ckpt, tmp_path):
    config, ckpt = txt2img_ckpt
    outdir = tmp_path / "out"
    (outdir / "samples").mkdir(parents=True)
    (outdir / "samples" / "0001.png").write_bytes(b"written by a run still going")  # count 1 -> would take 0001
    argv = ["--prompt", "a cat", "--outdir", str(outdir), "--config", str(config), "--ckpt", str(ckpt),
            "--n_samples", "2", "--ddim_steps", "2", "--H", "16", "--W", "16"]
    first = script("txt2img").main(argv)
    second = script("txt2img").main(argv)
    samples = sorted(p.name for p in (outdir / "samples").iterdir())
    assert samples == ["0001.png", "0002.png", "0003.png", "0004.png", "0005.png"]
    assert (outdir / "samples" / "0001.png").read_bytes() == b"written by a run still going"
    assert {p.name for p in first + second if p.parent == outdir} == {"a-cat.png", "a-cat-1.png"}


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("damage,expected", [
    ("truncated", "the file may be truncated or corrupt"),
    ("empty", "is empty (0 bytes)"),
    ("malicious", "refused to load 'posix.system'"),
])
def test_bad_checkpoints_give_one_line(txt2img_ckpt, tmp_path, monkeypatch, capsys, damage, expected):
    config, ckpt = txt2img_ckpt
    bad = tmp_path / "model.ckpt"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        bad.write_bytes(ckpt.read_bytes()[:4000])
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        class Evil:
            def __reduce__(self):
                return os.system, (f"touch {marker}",)

        torch.save({"state_dict": {}, "x": Evil()}, bad)
    err = _run_script("txt2img", ["--prompt", "x", "--outdir", str(tmp_path / "out"), "--config", str(config),
                                  "--ckpt", str(bad), "--ddim_steps", "2", "--H", "16", "--W", "16"],
                      monkeypatch, capsys)
    assert expected in err and str(bad) in err, err
    assert not marker.exists()


def test_bad_arguments_are_found_before_the_model_loads(txt2img_ckpt, tmp_path, monkeypatch, capsys):
    config, ckpt = txt2img_ckpt
    forbid_model_loading(monkeypatch)
    common = ["--config", str(config), "--ckpt", str(ckpt), "--H", "16", "--W", "16"]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = _run_script("txt2img", ["--prompt", "x", "--outdir", str(a_file), "--ddim_steps", "2", *common],
                      monkeypatch, capsys)
    assert f"--outdir '{a_file}' is a file, not a folder" in err
    err = _run_script("txt2img", ["--prompt", "x", "--outdir", "/proc/no/such", "--ddim_steps", "2", *common],
                      monkeypatch, capsys)
    assert "--outdir '/proc/no/such' cannot be written" in err
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a caf\xe9 in latin-1\n")
    err = _run_script("txt2img", ["--from-file", str(prompts), "--outdir", str(tmp_path / "o"), "--ddim_steps", "2",
                                  *common], monkeypatch, capsys)
    assert f"prompt file {prompts} is not UTF-8 text (byte 0xe9 at position 5)" in err
    err = _run_script("txt2img", ["--prompt", "x", "--outdir", str(tmp_path / "o"), "--ddim_steps", "21", *common],
                      monkeypatch, capsys)
    assert "--ddim_steps 21 is more than the 20 diffusion steps of the model" in err


def test_corrupt_mask_is_named_before_the_model_loads(tmp_path, monkeypatch, capsys):
    forbid_model_loading(monkeypatch)
    make_inpainting_pairs(tmp_path / "in", n=1)
    (tmp_path / "in" / "ex0_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    err = _run_script("inpaint", ["--indir", str(tmp_path / "in"), "--outdir", str(tmp_path / "out"), "--config",
                                  str(CONFIGS / "tiny-inpainting.yaml"), "--ckpt", str(tmp_path / "none.ckpt")],
                      monkeypatch, capsys)
    assert "ex0_mask.png" in err, err
    assert np.array(Image.open(tmp_path / "in" / "ex0.png")).shape == (16, 16, 3)
