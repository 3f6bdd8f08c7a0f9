"""End-to-end tests of the sampling scripts in scripts/, run in-process through their ``main(argv)``.

Each script samples from a tiny checkpoint built here with the project's own code (configs in
tests/configs/, weights perturbed so that no output layer is zero). The tests check what was written
(counts, sizes), that a seed repeats, that the images equal those from calling the model and sampler
directly, that the original README's command lines parse, and the clear errors raised before any
model is loaded.
"""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import REPO
from helpers.checkpoints import CONFIGS, STEP, build_checkpoint, write_tiny_clip
from helpers.scripts import forbid_model_loading, make_inpainting_pairs, png, run_txt2img, script
from ldm.scripting import cli, inputs, loading, outputs
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.plms import PLMSSampler

# The tiny checkpoints (txt2img_ckpt, uncond_ckpt, cin_ckpt) are fixtures of tests/conftest.py.


def reference_images(model, samples: torch.Tensor) -> np.ndarray:
    """What the scripts write for latent samples: decode, [0, 1], 255 * x truncated."""
    x = outputs.decode_to_unit(model, samples)
    return (255.0 * x.cpu().numpy().transpose(0, 2, 3, 1)).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on shared cores more threads only contend."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------
# the README's command lines
# ------------------------------------------------------------------------------------------------

README_COMMANDS = [
    ("txt2img", 'python scripts/txt2img.py --prompt "a virus monster is playing guitar, oil on canvas" '
                '--ddim_eta 0.0 --n_samples 4 --n_iter 4 --scale 5.0  --ddim_steps 50'),
    ("txt2img", 'python scripts/txt2img.py --prompt "a sunset behind a mountain range, vector image" '
                '--ddim_eta 1.0 --n_samples 1 --n_iter 1 --H 384 --W 1024 --scale 5.0'),
    ("inpaint", "python scripts/inpaint.py --indir data/inpainting_examples/ --outdir outputs/inpainting_results"),
    ("sample_diffusion", "python scripts/sample_diffusion.py -r models/ldm/celeba256/model.ckpt -l logs/x -n 100 "
                         "--batch_size 10 -c 200 -e 0.0"),
    ("knn2img", 'python scripts/knn2img.py  --prompt "a happy bear reading a newspaper, oil on canvas"'),
    ("knn2img", 'python scripts/knn2img.py  --prompt "a happy pineapple" --use_neighbors --knn 20'),
    ("train_searcher", "python scripts/train_searcher.py"),
]


@pytest.mark.parametrize("name,command", README_COMMANDS)
def test_readme_command_lines_parse(name, command):
    argv = shlex.split(command)[2:]
    parser = script(name).get_parser()
    opt, unknown = parser.parse_known_args(argv)
    assert unknown == []
    if name == "txt2img":
        assert opt.scale == 5.0 and opt.outdir == "outputs/txt2img-samples"
        assert opt.config is None and opt.default_config == "configs/latent-diffusion/txt2img-1p4B-eval.yaml"
        assert opt.ckpt == "models/ldm/text2img-large/model.ckpt"
    if name == "inpaint":
        assert opt.indir == "data/inpainting_examples/" and opt.steps == 50
        assert opt.ckpt == "models/ldm/inpainting_big/last.ckpt"
    if name == "sample_diffusion":
        assert (opt.resume, opt.n_samples, opt.batch_size, opt.custom_steps, opt.eta) == (
            "models/ldm/celeba256/model.ckpt", 100, 10, 200, 0.0)
    if name == "knn2img":
        assert opt.database == "artbench-surrealism" and opt.H == 768


def test_readme_txt2img_sizes_fit_the_model():
    config = inputs.load_config(REPO / "configs/latent-diffusion/txt2img-1p4B-eval.yaml")
    assert inputs.latent_size(config.model, 384, 1024) == (48, 128)
    assert inputs.latent_channels(config.model) == 4


# ------------------------------------------------------------------------------------------------
# txt2img
# ------------------------------------------------------------------------------------------------


def test_txt2img_writes_samples_and_grid(txt2img_ckpt, tmp_path):
    config, ckpt = txt2img_ckpt
    written = run_txt2img(config, ckpt, tmp_path / "a")
    samples = sorted((tmp_path / "a" / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert all(png(p).shape == (16, 16, 3) for p in samples)
    grid = tmp_path / "a" / "a-red-circle.png"
    assert grid.is_file() and png(grid).shape == (2 + 2 * 18, 2 + 2 * 18, 3)  # 2 rows x 2 samples, 2px padding
    assert set(written) == set(samples) | {grid}

    # the same seed gives the same images; running again continues the numbering
    run_txt2img(config, ckpt, tmp_path / "b")
    for name in ("0000.png", "0003.png"):
        assert np.array_equal(png(tmp_path / "a" / "samples" / name), png(tmp_path / "b" / "samples" / name))
    run_txt2img(config, ckpt, tmp_path / "a", "--seed", "7")
    assert len(list((tmp_path / "a" / "samples").glob("*.png"))) == 8
    assert not np.array_equal(png(tmp_path / "a" / "samples" / "0004.png"), png(samples[0]))

    # the images are those of the model and DDIM called directly
    model, _ = loading.load_model(inputs.load_config(config), ckpt, torch.device("cpu"))
    loading.seed_everything(cli.DEFAULT_SEED)
    with torch.no_grad():
        uc = model.get_learned_conditioning(2 * [""])
        c = model.get_learned_conditioning(2 * ["a red circle"])
        first, _ = DDIMSampler(model).sample(S=3, conditioning=c, batch_size=2, shape=[2, 8, 8], verbose=False,
                                             unconditional_guidance_scale=3.0, unconditional_conditioning=uc, eta=0.0)
        expected = reference_images(model, first)
    assert np.array_equal(png(samples[0]), expected[0])
    assert np.array_equal(png(samples[1]), expected[1])


def test_txt2img_from_file_and_plms(txt2img_ckpt, tmp_path):
    config, ckpt = txt2img_ckpt
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square on the left\n")
    argv = ["--from-file", str(prompts), "--outdir", str(tmp_path / "out"), "--config", str(config), "--ckpt",
            str(ckpt), "--ddim_steps", "3", "--n_samples", "1", "--H", "16", "--W", "16", "--plms", "--device", "cpu"]
    script("txt2img").main(argv)
    assert len(list((tmp_path / "out" / "samples").glob("*.png"))) == 2
    assert (tmp_path / "out" / "a-blue-square-on-the-left.png").is_file()

    model, _ = loading.load_model(inputs.load_config(config), ckpt, torch.device("cpu"))
    loading.seed_everything(cli.DEFAULT_SEED)
    with torch.no_grad():
        uc = model.get_learned_conditioning([""])
        c = model.get_learned_conditioning(["a red circle"])
        samples, _ = PLMSSampler(model).sample(S=3, conditioning=c, batch_size=1, shape=[2, 8, 8], verbose=False,
                                               unconditional_guidance_scale=5.0, unconditional_conditioning=uc)
    assert np.array_equal(png(tmp_path / "out" / "samples" / "0000.png"), reference_images(model, samples)[0])


@pytest.mark.parametrize("sampler", ["dpmpp2m", "dpm_solver++", "ddpm"])
def test_txt2img_other_samplers(txt2img_ckpt, tmp_path, sampler):
    config, ckpt = txt2img_ckpt
    run_txt2img(config, ckpt, tmp_path, "--sampler", sampler, "--n_iter", "1")
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2


def test_txt2img_argument_errors(txt2img_ckpt, tmp_path, monkeypatch):
    config, ckpt = txt2img_ckpt
    forbid_model_loading(monkeypatch)
    main = script("txt2img").main
    common = ["--ddim_steps", "5", "--outdir", str(tmp_path), "--config", str(config), "--ckpt", str(ckpt)]
    with pytest.raises(FileNotFoundError, match="prompt file not found: .*nope.txt"):
        main(common + ["--from-file", str(tmp_path / "nope.txt")])
    with pytest.raises(ValueError, match="--H 250 must be a positive multiple of 4"):
        main(common + ["--H", "250"])
    with pytest.raises(ValueError, match="unknown sampler 'euler'; allowed: ddpm, ddim, plms, dpmpp2m"):
        main(common + ["--sampler", "euler"])
    with pytest.raises(ValueError, match="eta=0 only"):
        main(common + ["--plms", "--ddim_eta", "1.0"])
    with pytest.raises(ValueError, match="contradicts --plms"):
        main(common + ["--plms", "--sampler", "ddim"])
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*missing\.ckpt"):
        main(common[:-1] + [str(tmp_path / "missing.ckpt")])
    with pytest.raises(FileNotFoundError, match="config not found"):
        main(["--config", str(tmp_path / "none.yaml")])


def test_missing_model_zoo_checkpoint_names_the_download_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    forbid_model_loading(monkeypatch)
    with pytest.raises(FileNotFoundError) as err:
        script("txt2img").main(["--outdir", str(tmp_path / "out")])
    assert "models/ldm/text2img-large/model.ckpt" in str(err.value)
    assert "bash scripts/download_models.sh text2img-large" in str(err.value)


def test_strict_checkpoint_loading(txt2img_ckpt, tmp_path):
    config, ckpt = txt2img_ckpt
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"].pop(next(iter(state["state_dict"])))
    state["state_dict"]["not.a.key"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="1 missing keys .* 1 unexpected keys .*not.a.key"):
        loading.load_model(inputs.load_config(config), tmp_path / "bad.ckpt", torch.device("cpu"))


# ------------------------------------------------------------------------------------------------
# inpaint
# ------------------------------------------------------------------------------------------------


def test_inpaint_end_to_end(tmp_path):
    config, ckpt = build_checkpoint("tiny-inpainting.yaml", tmp_path / "model")
    names = make_inpainting_pairs(tmp_path / "in")
    argv = ["--indir", str(tmp_path / "in"), "--outdir", str(tmp_path / "out"), "--steps", "3", "--config",
            str(config), "--ckpt", str(ckpt), "--device", "cpu"]
    written = script("inpaint").main(argv)
    assert sorted(p.name for p in written) == names
    for name in names:
        out, original = png(tmp_path / "out" / name), png(tmp_path / "in" / name)
        mask = png(tmp_path / "in" / name.replace(".png", "_mask.png")) > 127
        assert out.shape == original.shape
        # known pixels are kept (up to the [-1, 1] round trip), the hole is filled in
        assert np.abs(out[~mask].astype(int) - original[~mask]).max() <= 1
        assert np.abs(out[mask].astype(int) - original[mask]).mean() > 5

    # the same seed repeats; the result equals the model and DDIM called directly
    script("inpaint").main(argv[:3] + [str(tmp_path / "again")] + argv[4:])
    assert np.array_equal(png(tmp_path / "out" / names[0]), png(tmp_path / "again" / names[0]))
    inpaint = script("inpaint")
    model, _ = loading.load_model(inputs.load_config(config), ckpt, torch.device("cpu"))
    loading.seed_everything(cli.DEFAULT_SEED)
    with torch.no_grad(), model.ema_scope():
        batch = inpaint.make_batch(str(tmp_path / "in" / names[0]), str(tmp_path / "in" / "ex0_mask.png"),
                                   torch.device("cpu"))
        c = model.cond_stage_model.encode(batch["masked_image"])
        c = torch.cat((c, torch.nn.functional.interpolate(batch["mask"], size=c.shape[-2:])), dim=1)
        samples, _ = DDIMSampler(model).sample(S=3, conditioning=c, batch_size=1, shape=(3, 8, 8), verbose=False)
        predicted = outputs.decode_to_unit(model, samples)
        mask = (batch["mask"] + 1) / 2
        expected = (1 - mask) * (batch["image"] + 1) / 2 + mask * predicted
    assert np.array_equal(png(tmp_path / "out" / names[0]), outputs.to_uint8(expected[0]))

    # a second run into the same folder keeps every earlier file and adds <name>-1.png beside it
    kept = {name: png(tmp_path / "out" / name) for name in names}
    rerun = script("inpaint").main(argv)
    assert sorted(p.name for p in rerun) == sorted(n.replace(".png", "-1.png") for n in names)
    for name in names:
        assert np.array_equal(png(tmp_path / "out" / name), kept[name])
        assert np.array_equal(png(tmp_path / "out" / name.replace(".png", "-1.png")), kept[name])


def test_inpaint_mask_size_mismatch_fails_first(tmp_path, monkeypatch):
    forbid_model_loading(monkeypatch)
    make_inpainting_pairs(tmp_path / "in", n=1)
    Image.fromarray(np.zeros((8, 16), dtype=np.uint8)).save(tmp_path / "in" / "ex0_mask.png")
    argv = ["--indir", str(tmp_path / "in"), "--outdir", str(tmp_path / "out"), "--config",
            str(CONFIGS / "tiny-inpainting.yaml"), "--ckpt", str(tmp_path / "none.ckpt")]
    with pytest.raises(ValueError, match=r"mask .*ex0_mask.png is 16x8 but image .*ex0.png is 16x16"):
        script("inpaint").main(argv)
    (tmp_path / "in" / "ex0.png").unlink()
    with pytest.raises(FileNotFoundError, match="has no image"):
        script("inpaint").main(argv)


def test_shipped_inpainting_examples():
    folder = REPO / "data" / "inpainting_examples"
    pairs = script("inpaint").find_pairs(str(folder))
    assert 2 <= len(pairs) <= 3
    script("inpaint").check_sizes(pairs, 8)
    for image, mask in pairs:
        assert Path(image).stat().st_size < 100_000 and Path(mask).stat().st_size < 100_000
        values = np.unique(png(Path(mask)))
        assert set(values.tolist()) == {0, 255}


# ------------------------------------------------------------------------------------------------
# sample_diffusion
# ------------------------------------------------------------------------------------------------


def test_sample_diffusion_layout_and_numbers(uncond_ckpt, tmp_path):
    config, ckpt = uncond_ckpt
    argv = ["-r", str(ckpt), "-n", "3", "--batch_size", "2", "-c", "2", "-e", "0.0", "-l", str(tmp_path / "logs"),
            "--device", "cpu"]
    written = script("sample_diffusion").main(argv)
    runs = list((tmp_path / "logs" / "my_model" / "samples" / f"{STEP:08}").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert sorted(p.name for p in (run / "img").iterdir()) == [f"sample_{i:06}.png" for i in range(3)]
    npz = run / "numpy" / "3x16x16x3-samples.npz"
    assert npz.is_file() and (run / "sampling_config.yaml").is_file()
    assert set(written) == set((run / "img").iterdir()) | {npz, run / "sampling_config.yaml"}
    arr = np.load(npz)["arr_0"]
    assert arr.shape == (3, 16, 16, 3) and arr.dtype == np.uint8
    sampling_config = OmegaConf.load(run / "sampling_config.yaml")
    assert sampling_config.n_samples == 3 and sampling_config.custom_steps == 2

    # DDIM with eta 0 in batches of 2 + 1, called directly, gives the same uint8 arrays
    model, _ = loading.load_model(inputs.load_config(config), ckpt, torch.device("cpu"))
    loading.seed_everything(cli.DEFAULT_SEED)
    expected = []
    with torch.no_grad(), model.ema_scope():
        for bs in (2, 1):
            samples, _ = DDIMSampler(model).sample(S=2, batch_size=bs, shape=(2, 8, 8), eta=0.0, verbose=False)
            expected.append(script("sample_diffusion").custom_to_np(model.decode_first_stage(samples)))
    assert np.array_equal(arr, np.concatenate(expected))
    assert np.array_equal(png(run / "img" / "sample_000002.png"), arr[2])


def test_sample_diffusion_from_logdir_vanilla_and_overrides(uncond_ckpt, tmp_path):
    config, ckpt = uncond_ckpt
    logdir = tmp_path / "run"
    logdir.mkdir()
    shutil.copy(config, logdir / "config.yaml")
    shutil.copy(ckpt, logdir / "model.ckpt")
    argv = ["-r", str(logdir), "-n", "2", "--batch_size", "2", "--vanilla_sample", "--device", "cpu",
            "model.params.log_every_t=5"]
    script("sample_diffusion").main(argv)
    run = next((logdir / "samples" / f"{STEP:08}").iterdir())
    assert len(list((run / "img").glob("*.png"))) == 2
    assert OmegaConf.load(run / "sampling_config.yaml").sampler == "ddpm"
    with pytest.raises(ValueError, match="config overrides key=value"):
        script("sample_diffusion").main(argv + ["--bogus"])
    with pytest.raises(FileNotFoundError, match="-r/--resume: .*nothing does not exist"):
        script("sample_diffusion").main(["-r", str(tmp_path / "nothing")])


def test_ddpm_sampler_matches_p_sample_loop(uncond_ckpt):
    config, ckpt = uncond_ckpt
    model, _ = loading.load_model(inputs.load_config(config), ckpt, torch.device("cpu"))
    from ldm.models.diffusion.sampling import DDPMSampler

    torch.manual_seed(99)
    ours, _ = DDPMSampler(model).sample(S=None, batch_size=2, shape=(2, 8, 8), verbose=False)
    torch.manual_seed(99)
    reference = model.p_sample_loop(None, (2, 2, 8, 8), verbose=False)
    assert torch.equal(ours, reference)


# ------------------------------------------------------------------------------------------------
# knn2img and train_searcher
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rdm_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rdm")
    clip = write_tiny_clip(root / "clip")
    config, ckpt = build_checkpoint("tiny-rdm.yaml", root / "model")
    db = root / "databases" / "artbench-surrealism"
    db.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part in range(2):  # a database split over two files, as the large released ones are
        np.savez(db / f"part{part}.npz", embedding=rng.standard_normal((30, 16)).astype(np.float32),
                 img_id=np.arange(30) + 30 * part, patch_coords=rng.integers(0, 100, (30, 4)))
    return {"clip": clip, "config": config, "ckpt": ckpt, "db_root": root / "databases"}


def test_train_searcher_and_knn2img(rdm_setup, tmp_path):
    s = rdm_setup
    searchers = tmp_path / "searchers"
    script("train_searcher").main(["--database", str(s["db_root"] / "artbench-surrealism"), "--target_path",
                                   str(searchers / "artbench-surrealism"), "--knn", "5"])
    assert any((searchers / "artbench-surrealism").iterdir())
    argv = ["--prompt", "a happy pineapple", "--use_neighbors", "--knn", "4", "--database", "artbench-surrealism",
            "--database_root", str(s["db_root"]), "--searcher_root", str(searchers), "--clip_type", str(s["clip"]),
            "--config", str(s["config"]), "--ckpt", str(s["ckpt"]), "--H", "16", "--W", "16", "--n_samples", "2",
            "--ddim_steps", "2", "--outdir", str(tmp_path / "out"), "--device", "cpu"]
    written = script("knn2img").main(argv)
    samples = sorted((tmp_path / "out" / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["00000.png", "00001.png"]
    assert (tmp_path / "out" / "grid-0000.png") in written
    assert png(samples[0]).shape == (16, 16, 3)

    # equal to the model conditioned on [text embedding, 4 neighbour embeddings] directly
    from ldm.modules.encoders.modules import FrozenCLIPTextEmbedder
    from ldm.retrieval import Searcher

    model, _ = loading.load_model(inputs.load_config(s["config"]), s["ckpt"], torch.device("cpu"))
    c = FrozenCLIPTextEmbedder(str(s["clip"])).encode(2 * ["a happy pineapple"])
    nn = Searcher("artbench-surrealism", s["db_root"], searchers)(c, 4)
    assert nn["nn_embeddings"].shape == (2, 4, 16)
    c = torch.cat([c, torch.from_numpy(nn["nn_embeddings"])], dim=1)
    loading.seed_everything(cli.DEFAULT_SEED)
    with torch.no_grad(), model.ema_scope():
        samples_direct, _ = DDIMSampler(model).sample(S=2, conditioning=c, batch_size=2, shape=[4, 8, 8],
                                                      verbose=False, unconditional_guidance_scale=5.0,
                                                      unconditional_conditioning=torch.zeros_like(c), eta=0.0)
    assert np.array_equal(png(samples[1]), reference_images(model, samples_direct)[1])


def test_searcher_numpy_fallback_matches_exact_search(rdm_setup, tmp_path, monkeypatch):
    import ldm.retrieval as retrieval

    monkeypatch.setattr(retrieval, "scann_module", lambda: None)
    db = retrieval.load_database(rdm_setup["db_root"] / "artbench-surrealism")
    assert db["embedding"].shape == (60, 16) and db["img_id"].tolist() == list(range(60))
    searcher = retrieval.build_searcher(db["embedding"], k=5)
    assert isinstance(searcher, retrieval.NumpySearcher)
    retrieval.save_searcher(searcher, tmp_path / "s")
    loaded = retrieval.load_searcher(tmp_path / "s")
    queries = retrieval.normalize(db["embedding"][:3])
    idx, scores = loaded.search_batched(queries, final_num_neighbors=5)
    assert idx[:, 0].tolist() == [0, 1, 2] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    exact = np.argsort(-(queries @ retrieval.normalize(db["embedding"]).T), axis=1)[:, :5]
    assert np.array_equal(idx, exact)


def test_scann_searcher_finds_the_exact_neighbours(rdm_setup, tmp_path):
    pytest.importorskip("scann")
    import ldm.retrieval as retrieval

    db = retrieval.load_database(rdm_setup["db_root"] / "artbench-surrealism")
    searcher = retrieval.build_searcher(db["embedding"], k=5)
    assert not isinstance(searcher, retrieval.NumpySearcher)
    retrieval.save_searcher(searcher, tmp_path / "s")
    queries = retrieval.normalize(db["embedding"][:4] + 0.1)
    idx, _ = retrieval.load_searcher(tmp_path / "s").search_batched(queries, final_num_neighbors=5)
    exact = np.argsort(-(queries @ retrieval.normalize(db["embedding"]).T), axis=1)[:, :5]
    assert np.array_equal(np.asarray(idx, dtype=np.int64), exact)


def test_knn2img_argument_errors(tmp_path, monkeypatch):
    forbid_model_loading(monkeypatch)
    main = script("knn2img").main
    with pytest.raises(ValueError, match="--knn must be between 1 and 20 .* got 21"):
        main(["--use_neighbors", "--knn", "21"])
    with pytest.raises(FileNotFoundError, match="no .npz files in the retrieval database"):
        main(["--use_neighbors", "--database_root", str(tmp_path), "--config", str(CONFIGS / "tiny-rdm.yaml"),
              "--ckpt", str(CONFIGS / "tiny-rdm.yaml"), "--H", "16", "--W", "16", "--ddim_steps", "5"])
    with pytest.raises(SystemExit):
        main(["--database", "not-a-database"])


# ------------------------------------------------------------------------------------------------
# sample_cin, superres, img2img
# ------------------------------------------------------------------------------------------------


def test_sample_cin_end_to_end(cin_ckpt, tmp_path):
    config, ckpt = cin_ckpt
    argv = ["--classes", "25", "birdhouse", "--n_samples_per_class", "2", "--ddim_steps", "2", "--scale", "3.0",
            "--outdir", str(tmp_path / "out"), "--config", str(config), "--ckpt", str(ckpt), "--device", "cpu"]
    script("sample_cin").main(argv)
    samples = sorted((tmp_path / "out" / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["class0025_0000.png", "class0025_0001.png", "class0448_0002.png",
                                         "class0448_0003.png"]
    assert png(tmp_path / "out" / "grid-0000.png").shape == (2 + 2 * 18, 2 + 2 * 18, 3)

    model, _ = loading.load_model(inputs.load_config(config), ckpt, torch.device("cpu"))
    loading.seed_everything(cli.DEFAULT_SEED)
    with torch.no_grad():
        uc = model.get_learned_conditioning({"class_label": torch.tensor([1000, 1000])})
        c = model.get_learned_conditioning({"class_label": torch.tensor([25, 25])})
        samples_direct, _ = DDIMSampler(model).sample(S=2, conditioning=c, batch_size=2, shape=[3, 8, 8],
                                                      verbose=False, unconditional_guidance_scale=3.0,
                                                      unconditional_conditioning=uc, eta=0.0)
    assert np.array_equal(png(samples[0]), reference_images(model, samples_direct)[0])


def test_sample_cin_unknown_class_fails_first(tmp_path, monkeypatch):
    forbid_model_loading(monkeypatch)
    with pytest.raises(ValueError, match="unknown class 'birdhose'.*birdhouse"):
        script("sample_cin").main(["--classes", "birdhose", "--config", str(CONFIGS / "tiny-cin.yaml")])
    with pytest.raises(ValueError, match="class-conditional model"):
        script("sample_cin").main(["--config", str(CONFIGS / "tiny-uncond.yaml")])


def test_superres_upscales_4x(tmp_path):
    config, ckpt = build_checkpoint("tiny-superres.yaml", tmp_path / "model")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(tmp_path / "low.png")
    argv = ["--input", str(tmp_path / "low.png"), "--outdir", str(tmp_path / "out"), "--ddim_steps", "2",
            "--config", str(config), "--ckpt", str(ckpt), "--device", "cpu"]
    written = script("superres").main(argv)
    assert written == [tmp_path / "out" / "low.png"]
    assert png(written[0]).shape == (32, 48, 3)
    first = png(written[0])
    # a second run into the same folder keeps the first file and writes the same image beside it
    again = script("superres").main(argv)
    assert again == [tmp_path / "out" / "low-1.png"]
    assert np.array_equal(first, png(written[0])) and np.array_equal(first, png(again[0]))


def test_img2img_class_and_unconditional(cin_ckpt, uncond_ckpt, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "init.png")
    config, ckpt = cin_ckpt
    common = ["--init_img", str(tmp_path / "init.png"), "--strength", "0.5", "--ddim_steps", "4", "--device", "cpu"]
    script("img2img").main(common + ["--class_label", "3", "--config", str(config), "--ckpt", str(ckpt),
                                     "--outdir", str(tmp_path / "cls")])
    out = sorted((tmp_path / "cls" / "samples").glob("*.png"))
    assert len(out) == 2 and png(out[0]).shape == (16, 16, 3)
    assert (tmp_path / "cls" / "grid-0000.png").is_file()

    config, ckpt = uncond_ckpt
    script("img2img").main(common + ["--config", str(config), "--ckpt", str(ckpt), "--outdir", str(tmp_path / "u")])
    # the DDIM path called directly: encode, noise to step index t_enc - 1, decode from t_enc
    model, _ = loading.load_model(inputs.load_config(config), ckpt, torch.device("cpu"))
    sampler = DDIMSampler(model)
    sampler.make_schedule(ddim_num_steps=4, ddim_eta=0.0, verbose=False)
    init = torch.from_numpy(png(tmp_path / "init.png").astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    loading.seed_everything(cli.DEFAULT_SEED)
    with torch.no_grad(), model.ema_scope():
        z = model.get_first_stage_encoding(model.encode_first_stage(init)).repeat(2, 1, 1, 1)
        z_enc = sampler.stochastic_encode(z, torch.tensor([1, 1]))
        samples = sampler.decode(z_enc, None, 2, verbose=False)
    assert np.array_equal(png(tmp_path / "u" / "samples" / "0001.png"), reference_images(model, samples)[1])


def test_img2img_argument_errors(cin_ckpt, tmp_path, monkeypatch):
    forbid_model_loading(monkeypatch)
    Image.fromarray(np.zeros((15, 16, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    main = script("img2img").main
    config = str(CONFIGS / "tiny-cin.yaml")
    with pytest.raises(ValueError, match="give a --class_label"):
        main(["--init_img", str(tmp_path / "ok.png"), "--config", config])
    with pytest.raises(ValueError, match="16x15; width and height must be multiples of 4"):
        main(["--init_img", str(tmp_path / "odd.png"), "--config", config, "--class_label", "1"])
    with pytest.raises(ValueError, match="--strength must be in"):
        main(["--init_img", str(tmp_path / "ok.png"), "--config", config, "--strength", "1.5"])
    with pytest.raises(ValueError, match="give a --prompt"):
        main(["--init_img", str(tmp_path / "ok.png"), "--config", str(CONFIGS / "tiny-txt2img.yaml")])
