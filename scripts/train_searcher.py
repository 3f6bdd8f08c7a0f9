"""Build and save the nearest-neighbour searcher of a retrieval database for retrieval-augmented
diffusion (RDM, Blattmann et al. 2022), as the original ``scripts/train_searcher.py``:

    python scripts/train_searcher.py
    python scripts/train_searcher.py --database data/rdm/retrieval_databases/openimages \
        --target_path data/rdm/searchers/openimages --knn 20

The database is a folder of ``.npz`` files with CLIP image embeddings (array ``embedding``). The
searcher is a ScaNN searcher over the normalized embeddings (brute force below 20k entries,
asymmetric hashing with reordering below 100k, with tree partitioning above), serialized into
``--target_path``; without the scann package, an exact numpy searcher is saved instead.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ldm.scripting import cli
from ldm.retrieval import build_searcher, load_database, save_searcher, scann_module


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", "-d", default="data/rdm/retrieval_databases/openimages", type=str,
                        help="path to folder containing the clip feature of the database")
    parser.add_argument("--target_path", "-t", default="data/rdm/searchers/openimages", type=str,
                        help="path to the target folder where the searcher shall be stored.")
    parser.add_argument("--knn", "-k", default=20, type=int,
                        help="number of nearest neighbors, for which the searcher shall be optimized")
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the script; returns the searcher folder."""
    opt = get_parser().parse_args(argv)
    cli.check_positive("--knn", opt.knn)
    data_pool = load_database(opt.database, flag="--database")
    pool_size, dim = data_pool["embedding"].shape
    backend = "ScaNN" if scann_module() is not None else "numpy brute force (scann is not importable)"
    print(f"Initializing {backend} searcher: k={opt.knn}, {pool_size} embeddings of dim {dim}")
    searcher = build_searcher(data_pool["embedding"], opt.knn)
    folder = save_searcher(searcher, opt.target_path)
    files = sorted(p.name for p in folder.iterdir())
    print(f"Saved trained searcher under \"{folder}\" ({len(files)} files: {', '.join(files)})")
    return [folder]


if __name__ == "__main__":
    cli.run_script(main)
