"""rFID, PSNR, SSIM and LPIPS of a first-stage autoencoder's reconstructions: the columns of the model
zoo's first-stage table.

    python scripts/evaluate_autoencoder.py --row kl-f8 --images imagenet/val_flat/ --size 256
    python scripts/evaluate_autoencoder.py --config configs/autoencoder/autoencoder_kl_32x32x4.yaml \
        --ckpt logs/<run>/checkpoints/last.ckpt --images my_val_images/ --num_images 5000

--row takes config, checkpoint and published figures from models/model_zoo.yaml (the table's
figures are on the ImageNet validation set at 256x256). Weights are read locally: Inception
(--inception_weights, $LDM_INCEPTION_WEIGHTS, torch's hub cache) for rFID; for LPIPS the checkpoint's
own loss.perceptual_loss weights when it holds them, else VGG16 and the LPIPS heads from
--vgg_path/--lpips_path or their usual places.
"""
from __future__ import annotations

import argparse

from ldm.evaluation.settings import REGISTRY
from ldm.scripting.cli import check_positive, run_script

#: Rows of the printed table: (label, key, key of its spread, key in the registry).
ROWS = (("rFID", "rfid", None, "rfid"), ("PSNR", "psnr", "psnr_std", "psnr"), ("SSIM", "ssim", "ssim_std", None),
        ("LPIPS (PSIM)", "lpips", "lpips_std", "psim"))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", default=None, help="a row of the first-stage table (models/model_zoo.yaml)")
    p.add_argument("--config", default=None, help="first-stage config (overrides the row's)")
    p.add_argument("--ckpt", default=None, help="first-stage checkpoint (overrides the row's)")
    p.add_argument("--images", required=True, help="folder of dataset images to reconstruct")
    p.add_argument("--size", type=int, default=256, help="images are resized and centre-cropped to this size")
    p.add_argument("--num_images", type=int, default=None, help="use the first N images (default: all)")
    p.add_argument("--batch_size", type=int, default=16, help="images per batch")
    p.add_argument("--inception_weights", default=None, help="weights-inception-2015-12-05-6726825d.pth for rFID")
    p.add_argument("--vgg_path", default=None, help="torchvision VGG16 weights for LPIPS")
    p.add_argument("--lpips_path", default=None, help="LPIPS linear heads (vgg.pth)")
    p.add_argument("--no_rfid", action="store_true", help="skip rFID (no Inception weights needed)")
    p.add_argument("--no_lpips", action="store_true", help="skip LPIPS (no VGG weights needed)")
    p.add_argument("--registry", default=str(REGISTRY), help="the model-zoo registry")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> dict:
    opt = get_parser().parse_args(argv)
    check_positive("--batch_size", opt.batch_size)
    if opt.num_images is not None:
        check_positive("--num_images", opt.num_images)
    from ldm.evaluation import zoo
    from ldm.evaluation.reconstruction import dataset_images, evaluate_autoencoder, perceptual_metric
    from ldm.evaluation.evaluate import report
    from ldm.evaluation.inception import InceptionFeatures
    from ldm.scripting.inputs import load_config, require_file
    from ldm.scripting.loading import choose_device, load_model

    row = zoo.find_row(zoo.load_registry(opt.registry), opt.row, "first_stage") if opt.row else {}
    if not row and (opt.config is None or opt.ckpt is None):
        raise ValueError("give --row, or both --config and --ckpt")
    config_path, ckpt = zoo.row_paths(row, opt.config, opt.ckpt) if row else (opt.config, opt.ckpt)
    config = load_config(config_path)
    require_file(ckpt, "checkpoint")
    files = dataset_images(opt.images, opt.size, opt.num_images)
    device = choose_device(opt.device)
    extractor = None if opt.no_rfid else InceptionFeatures(opt.inception_weights, device=device)
    model, _ = load_model(config, ckpt, device)
    lpips = None if opt.no_lpips else perceptual_metric(model, opt.vgg_path, opt.lpips_path).to(device)
    result = evaluate_autoencoder(model, files, opt.size, opt.batch_size, extractor, lpips,
                                  progress=not opt.no_progress)
    published = row.get("published", {})
    result.update({"row": row.get("name"), "config": str(config_path), "checkpoint": str(ckpt),
                   "images": str(opt.images), "published": published})
    head = f"{'metric':<14} {'measured':>18}" + (f" {'published':>16}" if row else "")
    print(head + "\n" + "-" * len(head))
    for label, key, spread, pub_key in ROWS:
        if result[key] is None:
            continue
        value = f"{result[key]:.4f}" + ("" if spread is None else f" +- {result[spread]:.4f}")
        line = f"{label:<14} {value:>18}"
        if row:
            ref = published.get(pub_key) if pub_key else None
            ref_text = "-" if ref is None else (f"{ref} +- {published[pub_key + '_std']}"
                                                if pub_key + "_std" in published else f"{ref}")
            line += f" {ref_text:>16}"
        print(line)
    print(f"{result['num_images']} images at {opt.size}x{opt.size}")
    report(result, opt.out)
    return result


if __name__ == "__main__":
    run_script(main)
