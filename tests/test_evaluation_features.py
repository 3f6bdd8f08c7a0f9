"""The metrics beyond the model-zoo tables, each through its real extractor on stand-in weights saved here in the
library's format (nothing downloaded): sFID on the stand-in Inception's spatial features, FD_DINOv2 on a tiny
transformers Dinov2Model, the CLIP score on a tiny transformers CLIP; each checked against a computation that
does not go through the evaluation code, and each missing file reported before any image is read."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.checkpoints import write_letter_clip
from helpers.evaluation import run_evaluate, shapes_images, write_folder
from helpers.scripts import load_script
from ldm.evaluation import inception
from ldm.evaluation import metrics as M
from ldm.evaluation.evaluate import Settings, evaluate
from ldm.evaluation.image_sets import open_image_set

pytest.importorskip("transformers")

# The stand-in Inception weights (``weights``) are a fixture of tests/conftest.py.


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    return (write_folder(root / "samples", shapes_images(6, "train", 1)),
            write_folder(root / "reference", shapes_images(6, "validation", 2)))


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)) for few samples of many dimensions: with
    S_a = A'A and S_b = B'B (A, B the centred samples over sqrt(N - 1)), the nonzero eigenvalues of S_a S_b
    are those of the small matrix (A B')(B A'), so no D x D square root is needed."""
    a_c = (a - a.mean(0)) / np.sqrt(len(a) - 1)
    b_c = (b - b.mean(0)) / np.sqrt(len(b) - 1)
    cross = a_c @ b_c.T
    eig = np.clip(np.linalg.eigvals(cross @ cross.T).real, 0, None)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (a_c ** 2).sum() + (b_c ** 2).sum() - 2 * np.sqrt(eig).sum())


# ------------------------------------------------------------------------------------------------
# sFID: Inception's mixed_6/conv, first 7 channels
# ------------------------------------------------------------------------------------------------


def test_sfid_features_are_the_first_channels_of_mixed_6d(weights, sets):
    samples, _ = sets
    extractor = inception.InceptionFeatures(weights, layers=(inception.POOL_FEATURES, inception.SPATIAL_FEATURES))
    block_outputs = []  # the whole Mixed_6d block: its first 192 channels are the 1x1 branch
    handle = extractor.model.Mixed_6d.register_forward_hook(lambda m, a, out: block_outputs.append(out))
    try:
        ours = extractor(open_image_set(samples).batches(4), 6, progress=False)
    finally:
        handle.remove()
    spatial = ours[inception.SPATIAL_FEATURES]
    assert spatial.shape == (6, inception.SPATIAL_DIM) == (6, 2023)
    block = torch.cat(block_outputs)  # (6, 768, 17, 17)
    expected = block[:, :7].permute(0, 2, 3, 1).reshape(6, -1)  # TF's height, width, channel order
    torch.testing.assert_close(spatial, expected)
    assert ours[inception.POOL_FEATURES].shape == (6, 2048) and spatial.std(0).mean() > 0


@pytest.mark.slow  # two Frechet distances of 2023 dimensions: a 2023 x 2023 matrix square root each
def test_sfid_through_the_command_against_a_direct_computation(weights, sets, tmp_path):
    samples, reference = sets
    out = tmp_path / "r.json"
    load_script("evaluate").main(["--samples", str(samples), "--reference", str(reference), "--inception_weights",
                                  str(weights), "--metrics", "sfid", "--out", str(out), "--no_cache",
                                  "--device", "cpu", "--no_progress"])
    result = json.loads(out.read_text())
    extractor = inception.InceptionFeatures(weights, layers=(inception.SPATIAL_FEATURES,))
    feats = {name: extractor(open_image_set(path).batches(6), 6, progress=False)[inception.SPATIAL_FEATURES]
             for name, path in (("s", samples), ("r", reference))}
    expected = frechet(feats["s"].double().numpy(), feats["r"].double().numpy())
    assert result["sfid"] == pytest.approx(expected, rel=1e-3) and result["sfid"] > 0
    assert result["fid"] is None and any("sFID is not defined for 6 samples" in w for w in result["warnings"])
    itself = run_evaluate("--samples", str(samples), "--reference", str(samples), "--inception_weights",
                          str(weights), "--metrics", "sfid")
    assert itself["sfid"] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.slow  # a 2023 x 2023 matrix square root
def test_sfid_uses_adm_spatial_statistics(weights, sets, tmp_path, monkeypatch):
    samples, _ = sets
    images = shapes_images(6, "validation", 3)
    extractor = inception.InceptionFeatures(weights, layers=(inception.SPATIAL_FEATURES,))
    feats = extractor(open_image_set(samples).batches(6), 6, progress=False)[inception.SPATIAL_FEATURES]
    rng = np.random.default_rng(0)
    mu_s = feats.double().numpy().mean(0) + rng.normal(0, 0.1, inception.SPATIAL_DIM)
    sigma_s = np.cov(feats.double().numpy(), rowvar=False) + np.eye(inception.SPATIAL_DIM) * 0.01
    ref = tmp_path / "VIRTUAL_ref.npz"
    np.savez(ref, arr_0=images, mu=np.zeros(2048), sigma=np.eye(2048), mu_s=mu_s, sigma_s=sigma_s)
    seen = []
    real_call = inception.InceptionFeatures.__call__
    monkeypatch.setattr(inception.InceptionFeatures, "__call__",
                        lambda self, batches, total, desc="", progress=True: (seen.append(desc),
                                                                              real_call(self, batches, total))[1])
    result = evaluate(open_image_set(samples), open_image_set(ref, "--reference"),
                      inception.InceptionFeatures(weights, layers=(inception.SPATIAL_FEATURES,)),
                      Settings(metrics=("sfid",)), progress=False)
    assert seen == ["features --samples"]  # the reference's images were not needed
    expected = M.frechet_distance(M.feature_statistics(feats), {"mu": mu_s, "sigma": sigma_s})
    assert result["sfid"] == pytest.approx(expected, rel=1e-6)
    assert result["settings"]["sfid_reference_statistics"] == "precomputed mu_s/sigma_s"
    np.savez(tmp_path / "half.npz", arr_0=images, mu_s=mu_s)
    with pytest.raises(ValueError, match="holds \\['mu_s'\\] but not both mu_s and sigma_s"):
        open_image_set(tmp_path / "half.npz", "--reference")


# ------------------------------------------------------------------------------------------------
# FD_DINOv2: a tiny transformers Dinov2Model inside torch-fidelity's DINOv2 extractor
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                          image_size=224)
    Dinov2Model(config).save_pretrained(folder)
    return folder


def resize_like_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1's resize_bilinear (align_corners=False, no half-pixel centres): source = target * in / out."""
    _, _, h, w = x.shape

    def axis(n_in):
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        lo = src.floor().long().clamp(max=n_in - 1)
        return lo, (lo + 1).clamp(max=n_in - 1), (src - lo).to(x.dtype)

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    top = x[:, :, y0][..., x0] * (1 - fx) + x[:, :, y0][..., x1] * fx
    bottom = x[:, :, y1][..., x0] * (1 - fx) + x[:, :, y1][..., x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def direct_dinov2(folder, images: np.ndarray) -> np.ndarray:
    """CLS token after the final norm of the model in ``folder``, for uint8 (N, H, W, 3) images."""
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(folder).eval()
    x = resize_like_tf1(torch.from_numpy(images).permute(0, 3, 1, 2).double(), 224).float()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None] * 255
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None] * 255
    with torch.no_grad():
        return model(pixel_values=(x - mean) / std).last_hidden_state[:, 0].double().numpy()


def test_fd_dinov2_against_a_direct_computation(dinov2_folder, sets, tmp_path):
    samples, reference = sets
    out = tmp_path / "r.json"
    load_script("evaluate").main(["--samples", str(samples), "--reference", str(reference), "--dinov2_weights",
                                  str(dinov2_folder), "--metrics", "fd_dinov2", "--out", str(out), "--device", "cpu",
                                  "--cache_dir", str(tmp_path / "cache"), "--no_progress"])
    result = json.loads(out.read_text())
    read = lambda folder: np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])  # noqa: E731
    a, b = direct_dinov2(dinov2_folder, read(samples)), direct_dinov2(dinov2_folder, read(reference))
    assert a.shape == (6, 32) and a.std(0).mean() > 0
    expected = frechet(a, b)
    assert result["fd_dinov2"] == pytest.approx(expected, rel=1e-3) and expected > 0
    assert result["dinov2_weights"] == str(dinov2_folder) and result["fid"] is None
    assert result["inception_weights"] is None  # no Inception weights needed for this metric alone
    assert list((tmp_path / "cache").glob("dinov2-*.npz"))  # the reference features, cached
    itself = run_evaluate("--samples", str(samples), "--reference", str(samples), "--dinov2_weights",
                          str(dinov2_folder), "--metrics", "fd_dinov2")
    assert itself["fd_dinov2"] == pytest.approx(0.0, abs=1e-4)


def test_missing_dinov2_weights_say_what_where_and_how(sets, tmp_path, monkeypatch):
    samples, reference = sets
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("LDM_DINOV2_WEIGHTS", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError) as err:
        run_evaluate("--samples", str(samples), "--reference", str(reference), "--metrics", "fd_dinov2")
    msg = str(err.value)
    assert "config.json + model.safetensors" in msg and "facebook/dinov2-large" in msg
    assert "--dinov2_weights (not given)" in msg and "$LDM_DINOV2_WEIGHTS (not set)" in msg
    assert str(tmp_path / "hf") in msg and "Dinov2Model.from_pretrained" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"--dinov2_weights\) not found: .*empty is not a folder holding"):
        run_evaluate("--samples", str(samples), "--reference", str(reference), "--metrics", "fd_dinov2",
                     "--dinov2_weights", str(tmp_path / "empty"))
    monkeypatch.setenv("LDM_DINOV2_WEIGHTS", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"\$LDM_DINOV2_WEIGHTS\) not found: .*nowhere"):
        run_evaluate("--samples", str(samples), "--reference", str(reference), "--metrics", "fd_dinov2")


# ------------------------------------------------------------------------------------------------
# CLIP score: a tiny transformers CLIP and its processor, through torchmetrics' CLIPScore
# ------------------------------------------------------------------------------------------------


CAPTIONS = ["a cat", "a red cat", "a blue cat", "a cat", "a green cat", "a big cat"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPImageProcessor, CLIPModel

    folder = write_letter_clip(tmp_path_factory.mktemp("clip") / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    images = shapes_images(6, "train", 1)
    # the sign of a random model's mean cosine is arbitrary: make it positive, so the floor at 0 does not hide it
    if direct_clip(folder, images, CAPTIONS, floor=False) < 0:
        model = CLIPModel.from_pretrained(folder)
        with torch.no_grad():
            model.text_projection.weight.neg_()
        model.save_pretrained(folder)
    return folder


def direct_clip(folder, images: np.ndarray, captions: list[str], floor: bool = True) -> float:
    """max(mean(100 cos(image embedding, caption embedding)), 0) from the towers and projections themselves."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder).eval()
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=list(images), return_tensors="pt")["pixel_values"]
    tokens = CLIPTokenizer.from_pretrained(folder)(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        txt = model.text_projection(model.text_model(**tokens).pooler_output)
    cos = torch.nn.functional.cosine_similarity(img.double(), txt.double(), dim=1)
    score = float(100 * cos.mean())
    return max(score, 0.0) if floor else score


def test_clip_score_against_a_direct_computation(clip_folder, sets, tmp_path):
    samples, _ = sets
    prompts = tmp_path / "captions.txt"
    prompts.write_text("\n".join(CAPTIONS) + "\n")
    result = run_evaluate("--samples", str(samples), "--metrics", "clip_score", "--clip_model", str(clip_folder),
                          "--prompts", str(prompts), "--batch_size", "4")
    images = np.stack([np.asarray(Image.open(p)) for p in sorted(samples.glob("*.png"))])
    expected = direct_clip(clip_folder, images, CAPTIONS)
    assert expected > 0 and result["clip_score"] == pytest.approx(expected, rel=1e-4)
    assert result["clip_model"] == str(clip_folder) and result["inception_weights"] is None
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text("\n".join(CAPTIONS[::-1]) + "\n")
    other = run_evaluate("--samples", str(samples), "--metrics", "clip_score", "--clip_model", str(clip_folder),
                         "--prompts", str(shuffled))
    assert other["clip_score"] == pytest.approx(direct_clip(clip_folder, images, CAPTIONS[::-1]), rel=1e-4)


def test_clip_score_input_errors_come_first(clip_folder, sets, tmp_path, monkeypatch):
    samples, _ = sets
    from ldm.evaluation import clip_score

    monkeypatch.setattr(clip_score.ClipScorer, "__call__", lambda *a, **k: pytest.fail("scored before the error"))
    prompts = tmp_path / "short.txt"
    prompts.write_text("a cat\na dog\n")
    with pytest.raises(ValueError, match=r"short.txt holds 2 lines but there are 6 samples"):
        run_evaluate("--samples", str(samples), "--metrics", "clip_score", "--clip_model", str(clip_folder),
                     "--prompts", str(prompts))
    with pytest.raises(ValueError, match=r"clip_score .* give --prompts"):
        run_evaluate("--samples", str(samples), "--metrics", "clip_score", "--clip_model", str(clip_folder))
    with pytest.raises(ValueError, match="add clip_score to --metrics"):
        run_evaluate("--samples", str(samples), "--metrics", "isc", "--prompts", str(prompts))
    full = tmp_path / "full.txt"
    full.write_text("\n".join(CAPTIONS) + "\n")
    from ldm.modules.encoders.modules import MissingPretrainedFiles

    (tmp_path / "no_processor").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "no_processor" / name).write_bytes((clip_folder / name).read_bytes())
    with pytest.raises(MissingPretrainedFiles, match=r"missing preprocessor_config.json \+ tokenizer.json .*"
                                                     r"CLIPProcessor.from_pretrained"):
        run_evaluate("--samples", str(samples), "--metrics", "clip_score", "--clip_model",
                     str(tmp_path / "no_processor"), "--prompts", str(full))


def test_new_metrics_are_listed_and_checked(sets):
    samples, _ = sets
    with pytest.raises(ValueError, match="--metrics must be a comma-separated list of .*sfid, fd_dinov2, clip_score"):
        run_evaluate("--samples", str(samples), "--metrics", "fid,dino")
    with pytest.raises(ValueError, match="fd_dinov2 compare two sets: give --reference"):
        run_evaluate("--samples", str(samples), "--metrics", "fd_dinov2")
