"""Text-to-image sampling with a retrieval-augmented diffusion model (RDM, Blattmann et al. 2022), as the
original ``scripts/knn2img.py``:

    python scripts/knn2img.py --prompt "a happy bear reading a newspaper, oil on canvas"
    python scripts/knn2img.py --prompt "a happy pineapple" --use_neighbors --knn 10

The model is conditioned on CLIP embeddings: the CLIP text embedding of the prompt and, with
``--use_neighbors``, the CLIP image embeddings of its ``--knn`` (at most 20) nearest neighbours in
a retrieval database (``data/rdm/retrieval_databases/<database>``, searcher in
``data/rdm/searchers/<database>``; see ``scripts/train_searcher.py``). Classifier-free guidance uses
an all-zero conditioning. Samples go to ``<outdir>/samples/NNNNN.png``, one grid per ``--n_iter``
round to ``<outdir>/grid-NNNN.png``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ldm.retrieval import DATABASE_ROOT, DATABASES, SEARCHER_ROOT, Searcher
from ldm.scripting import cli, inputs

DEFAULT_CONFIG = "configs/retrieval-augmented-diffusion/768x768.yaml"
DEFAULT_CKPT = "models/rdm/rdm768x768/model.ckpt"
#: The RDM was trained with at most this many neighbours.
MAX_KNN = 20


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=str, nargs="?", default="a painting of a virus monster playing guitar",
                        help="the prompt to render")
    parser.add_argument("--outdir", type=str, nargs="?", default="outputs/txt2img-samples",
                        help="dir to write results to")
    parser.add_argument("--skip_grid", action="store_true",
                        help="do not save a grid, only individual samples. Helpful when evaluating lots of samples")
    parser.add_argument("--ddim_steps", type=int, default=50, help="number of ddim sampling steps")
    parser.add_argument("--n_repeat", type=int, default=1, help="number of repeats in CLIP latent space")
    parser.add_argument("--plms", action="store_true", help="use plms sampling (same as --sampler plms)")
    parser.add_argument("--ddim_eta", type=float, default=0.0,
                        help="ddim eta (eta=0.0 corresponds to deterministic sampling")
    parser.add_argument("--n_iter", type=int, default=1, help="sample this often")
    parser.add_argument("--H", type=int, default=768, help="image height, in pixel space")
    parser.add_argument("--W", type=int, default=768, help="image width, in pixel space")
    parser.add_argument("--n_samples", type=int, default=3,
                        help="how many samples to produce for each given prompt. A.k.a batch size")
    parser.add_argument("--n_rows", type=int, default=0, help="rows in the grid (default: n_samples)")
    parser.add_argument("--scale", type=float, default=5.0,
                        help="unconditional guidance scale: eps = eps(x, empty) + scale * (eps(x, cond) - eps(x, empty))")
    parser.add_argument("--from-file", type=str, help="if specified, load prompts from this file")
    parser.add_argument("--clip_type", type=str, default="ViT-L/14",
                        help="which CLIP model to use for retrieval and NN encoding: openai-clip name, Hugging Face "
                             "repository id or a local folder saved with save_pretrained")
    parser.add_argument("--database", type=str, default="artbench-surrealism", choices=DATABASES,
                        help="The database used for the search, only applied when --use_neighbors=True")
    parser.add_argument("--database_root", type=str, default=DATABASE_ROOT,
                        help="folder holding the retrieval databases")
    parser.add_argument("--searcher_root", type=str, default=SEARCHER_ROOT,
                        help="folder holding the trained searchers")
    parser.add_argument("--use_neighbors", default=False, action="store_true",
                        help="Include neighbors in addition to text prompt for conditioning")
    parser.add_argument("--knn", default=10, type=int,
                        help=f"The number of included neighbors (1 to {MAX_KNN}), only applied when --use_neighbors")
    cli.add_common_arguments(parser, DEFAULT_CONFIG, DEFAULT_CKPT)
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the script; returns the paths it wrote."""
    opt = get_parser().parse_args(argv)
    if not 1 <= opt.knn <= MAX_KNN:
        raise ValueError(f"--knn must be between 1 and {MAX_KNN} (the RDM was trained with at most {MAX_KNN} "
                         f"neighbours); got {opt.knn}")
    for name in ("n_iter", "n_samples", "ddim_steps", "n_repeat"):
        cli.check_positive(f"--{name}", getattr(opt, name))
    cli.check_positive("--n_rows", opt.n_rows, allow_zero=True)
    batch_size = opt.n_samples
    n_rows = opt.n_rows if opt.n_rows > 0 else batch_size
    if opt.from_file:
        data = cli.chunks(inputs.read_prompts(opt.from_file), batch_size)
    else:
        data = [batch_size * [opt.prompt]]
    files = cli.model_files(opt)
    config = inputs.load_config(files.configs)
    inputs.check_conditioning(config.model, ("nix",), "knn2img.py", ", ".join(map(str, files.configs)))
    h, w = inputs.latent_size(config.model, opt.H, opt.W)
    shape = [inputs.latent_channels(config.model), h, w]
    sampler_name, device = cli.prepare_sampling(opt, config, files.ckpt, opt.ddim_steps, eta=opt.ddim_eta)
    import torch
    from tqdm import tqdm, trange

    from ldm.scripting import generate, loading, outputs

    searcher = None
    if opt.use_neighbors:
        searcher = Searcher(opt.database, database_root=opt.database_root, searcher_root=opt.searcher_root)

    from ldm.modules.encoders.modules import FrozenCLIPTextEmbedder

    clip_text_encoder = FrozenCLIPTextEmbedder(opt.clip_type, n_repeat=opt.n_repeat).to(device)
    clip_text_encoder.load()
    model, sampler = loading.load_sampling_model(config, files.ckpt, device, sampler_name, compile_unet=opt.compile)
    folder = outputs.SampleFolder(opt.outdir)
    print(f"sampling scale for cfg is {opt.scale:.2f}")
    loading.seed_everything(opt.seed)

    with loading.sampling_scope(model, opt.precision, device):
        for _ in trange(opt.n_iter, desc="Sampling"):
            all_samples = []
            for prompts in tqdm(data, desc="data"):
                c = clip_text_encoder.encode(list(prompts))  # (B, n_repeat, D)
                if searcher is not None:
                    nn_dict = searcher(c, opt.knn)
                    nn_embeddings = torch.from_numpy(nn_dict["nn_embeddings"]).to(device=device, dtype=c.dtype)
                    c = torch.cat([c, nn_embeddings], dim=1)  # (B, n_repeat + knn, D)
                uc = torch.zeros_like(c) if opt.scale != 1.0 else None
                samples = generate.run_sampler(sampler_name, model, opt.ddim_steps, c.shape[0], shape,
                                               conditioning=c, eta=opt.ddim_eta, sampler=sampler,
                                               unconditional_guidance_scale=opt.scale, unconditional_conditioning=uc)
                x_samples = outputs.decode_to_unit(model, samples)
                folder.save_samples(x_samples, "{:05}.png".format)
                all_samples.append(x_samples)
            if not opt.skip_grid:
                folder.save_grid(all_samples, nrow=n_rows)

    folder.summary.print()
    print(f"Your samples are ready and waiting for you here: \n{opt.outdir} \nEnjoy.")
    return folder.summary.paths


if __name__ == "__main__":
    cli.run_script(main)
