"""Nearest-neighbour search over CLIP image embeddings for retrieval-augmented diffusion (RDM,
Blattmann, Rombach, Oktay & Ommer 2022, "Retrieval-Augmented Diffusion Models", arXiv:2204.11824).

A retrieval database is a folder of ``.npz`` files with the arrays ``embedding`` (N, D) (CLIP image
embeddings) and, in the released databases, ``img_id`` and ``patch_coords``. A searcher over the
L2-normalized embeddings is built with ScaNN (Guo et al. 2020, ``scann.scann_ops_pybind.builder``)
and serialized to a folder (``data/rdm/searchers/<database>``), as the original
``scripts/train_searcher.py`` / ``scripts/knn2img.py`` do. Where the ``scann`` package cannot be
imported, an exact brute-force dot-product search in numpy takes its place (the same neighbours as
ScaNN's brute-force mode), and the log says so.
"""
from __future__ import annotations

import glob
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm


logger = logging.getLogger(__name__)

#: Retrieval databases of the original release (``--database`` of knn2img.py).
DATABASES = ("openimages", "artbench-art_nouveau", "artbench-baroque", "artbench-expressionism",
             "artbench-impressionism", "artbench-post_impressionism", "artbench-realism", "artbench-renaissance",
             "artbench-romanticism", "artbench-surrealism", "artbench-ukiyo_e")
#: Where the databases and the trained searchers live.
DATABASE_ROOT = "data/rdm/retrieval_databases"
SEARCHER_ROOT = "data/rdm/searchers"
#: Arrays of a database besides ``embedding`` that are carried along when present.
DATABASE_KEYS = ("embedding", "img_id", "patch_coords")
#: Below this many embeddings a missing searcher is built on the fly (exact search), as the original does.
ON_THE_FLY_LIMIT = 20_000
#: Pool sizes from which train_searcher uses asymmetric hashing, and additionally tree partitioning.
AH_FROM, PARTITION_FROM = 20_000, 100_000
#: File that holds the normalized embeddings of a numpy (brute-force) searcher.
NUMPY_SEARCHER_FILE = "bruteforce_embeddings.npy"
#: Where the released retrieval databases (ArtBench styles) are published.
ARTBENCH_URL = "https://ommer-lab.com/files/rdm/artbench_databases.zip"


def database_hint(flag: str) -> str:
    """What to do when a retrieval database is missing; ``flag`` is the option that names its folder."""
    return (f"download the ArtBench databases (mkdir -p {DATABASE_ROOT} && wget -O {DATABASE_ROOT}/artbench.zip "
            f"{ARTBENCH_URL} && unzip {DATABASE_ROOT}/artbench.zip -d {DATABASE_ROOT}), or point {flag} at a "
            f"folder of .npz files with an 'embedding' array")


def scann_module() -> Any | None:
    """The ``scann`` module, or None where it cannot be imported."""
    try:
        import scann
    except ImportError:
        return None
    return scann


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def load_database(path: str | os.PathLike, flag: str = "--database") -> dict[str, np.ndarray]:
    """The arrays of every ``.npz`` in ``path`` (a folder, or one file), concatenated along the first axis;
    ``flag`` is the command-line option that named the folder, for the error when there is nothing."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(Path(p) for p in glob.glob(os.path.join(path, "*.npz")))
    if not files:
        raise FileNotFoundError(f"no .npz files in the retrieval database {path}; {database_hint(flag)}")
    parts: dict[str, list[np.ndarray]] = {}
    for f in tqdm(files, desc=f"Loading {path.name}", disable=len(files) < 2):
        with np.load(f) as data:
            if "embedding" not in data.files:
                raise ValueError(f"{f} has no 'embedding' array (arrays: {data.files})")
            for key in data.files:
                if key in DATABASE_KEYS:
                    parts.setdefault(key, []).append(data[key])
    database = {k: np.concatenate(v, axis=0) for k, v in parts.items() if len(v) == len(files)}
    if database["embedding"].ndim != 2:
        raise ValueError(f"the database {path} must hold embeddings of shape (N, D); got {database['embedding'].shape}")
    logger.info("loaded retrieval database %s: %d embeddings of dim %d", path, *database["embedding"].shape)
    return database


class NumpySearcher:
    """Exact maximum-inner-product search over normalized embeddings (the fallback where scann is missing)."""

    def __init__(self, dataset: np.ndarray):
        self.dataset = np.asarray(dataset, dtype=np.float32)  # (N, D), rows already normalized

    def search_batched(self, queries: np.ndarray, final_num_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores) of the ``final_num_neighbors`` highest dot products, best first: (Q, k) each."""
        scores = np.asarray(queries, dtype=np.float32) @ self.dataset.T  # (Q, N)
        k = min(final_num_neighbors, self.dataset.shape[0])
        idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(scores, idx, axis=1)

    def serialize(self, folder: str | os.PathLike) -> None:
        from ldm.checkpoint import atomic_path  # imports torch: only when a searcher is saved

        with atomic_path(Path(folder, NUMPY_SEARCHER_FILE)) as tmp, open(tmp, "wb") as f:
            np.save(f, self.dataset)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "NumpySearcher":
        return cls(np.load(Path(folder, NUMPY_SEARCHER_FILE)))


def build_searcher(embeddings: np.ndarray, k: int, metric: str = "dot_product", use_scann: bool | None = None,
                   reorder_k: int | None = None, aiq_threshold: float = 0.2, dims_per_block: int = 2,
                   partitioning_trainsize: int | None = None, num_leaves: int | None = None,
                   num_leaves_to_search: int | None = None) -> Any:
    """A searcher over the normalized ``embeddings``, chosen by pool size as the original train_searcher.py:
    brute force below 20k, asymmetric hashing + reordering below 100k, plus tree partitioning above."""
    if metric != "dot_product":
        raise ValueError(f"metric must be 'dot_product' (cosine similarity of normalized CLIP embeddings); got {metric!r}")
    data = normalize(embeddings)
    scann = scann_module() if use_scann is not False else None
    if use_scann and scann is None:
        raise ImportError("use_scann=True but the scann package cannot be imported (pip install scann)")
    if scann is None:
        logger.warning("scann is not importable: using exact brute-force search in numpy instead")
        return NumpySearcher(data)
    pool_size = data.shape[0]
    reorder_k = reorder_k or 2 * k
    builder = scann.scann_ops_pybind.builder(data, k, metric)
    if pool_size < AH_FROM:
        logger.info("building a brute-force ScaNN searcher over %d embeddings", pool_size)
        return builder.score_brute_force().build()
    if pool_size < PARTITION_FROM:
        logger.info("building a ScaNN searcher with asymmetric hashing and reordering over %d embeddings", pool_size)
        return builder.score_ah(dims_per_block, anisotropic_quantization_threshold=aiq_threshold).reorder(
            reorder_k).build()
    partitioning_trainsize = partitioning_trainsize or pool_size // 10
    num_leaves = num_leaves or int(np.sqrt(pool_size))
    num_leaves_to_search = num_leaves_to_search or max(num_leaves // 20, 1)
    logger.info("building a partitioned ScaNN searcher (%d leaves, %d searched) over %d embeddings",
                num_leaves, num_leaves_to_search, pool_size)
    return builder.tree(num_leaves=num_leaves, num_leaves_to_search=num_leaves_to_search,
                        training_sample_size=partitioning_trainsize).score_ah(
        dims_per_block, anisotropic_quantization_threshold=aiq_threshold).reorder(reorder_k).build()


def save_searcher(searcher: Any, folder: str | os.PathLike) -> Path:
    """Serialize a ScaNN or numpy searcher into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    searcher.serialize(str(folder))
    return Path(folder)


def load_searcher(folder: str | os.PathLike, database: dict[str, np.ndarray] | None = None) -> Any | None:
    """The searcher saved in ``folder``; None when there is none.

    A ScaNN searcher needs the scann package; without it the exact numpy search over ``database``
    takes its place (with a warning), or an ImportError is raised when no database is given.
    """
    folder = Path(folder)
    if (folder / NUMPY_SEARCHER_FILE).is_file():
        return NumpySearcher.load(folder)
    if not (folder / "scann_config.pb").is_file():
        return None
    scann = scann_module()
    if scann is not None:
        return scann.scann_ops_pybind.load_searcher(str(folder))
    if database is None:
        raise ImportError(f"{folder} holds a ScaNN searcher but the scann package cannot be imported (pip install scann)")
    logger.warning("scann is not importable: searching %s exactly with numpy instead of the ScaNN searcher", folder)
    return NumpySearcher(normalize(database["embedding"]))


class Searcher:
    """CLIP-embedding retrieval for knn2img: a database plus its searcher, loaded or built as the original."""

    def __init__(self, database: str, database_root: str | os.PathLike = DATABASE_ROOT,
                 searcher_root: str | os.PathLike = SEARCHER_ROOT, k: int = 20):
        self.database_name = database  # name of the database folder
        self.database_path = Path(database_root, database)  # folder of .npz files
        self.searcher_savedir = Path(searcher_root, database)  # folder of the serialized searcher
        self.database = load_database(self.database_path, flag="--database_root (with --database)")
        self.searcher = load_searcher(self.searcher_savedir, self.database)
        if self.searcher is None:
            n = self.database["embedding"].shape[0]
            if n >= ON_THE_FLY_LIMIT:
                raise FileNotFoundError(
                    f"no searcher in {self.searcher_savedir} for the database {database} ({n} embeddings); build it "
                    f"with `python scripts/train_searcher.py --database {self.database_path} --target_path "
                    f"{self.searcher_savedir}`")
            logger.info("no searcher in %s: building one on the fly for %d embeddings", self.searcher_savedir, n)
            self.searcher = build_searcher(self.database["embedding"], k)

    def search(self, x: torch.Tensor | np.ndarray, k: int) -> dict[str, Any]:
        """The ``k`` nearest database entries of each query embedding (B, D) or (B, 1, D)."""
        if hasattr(x, "detach"):  # a torch tensor
            x = x.detach().float().cpu().numpy()
        if x.ndim == 3:
            x = x[:, 0]
        queries = normalize(x)
        start = time.time()
        nns, distances = self.searcher.search_batched(queries, final_num_neighbors=k)
        exec_time = time.time() - start
        nns = np.asarray(nns, dtype=np.int64)
        out = {"nn_embeddings": normalize(self.database["embedding"][nns]), "queries": x, "exec_time": exec_time,
               "nns": nns, "distances": distances, "q_embeddings": queries}
        for key in ("img_id", "patch_coords"):
            if key in self.database:
                out[key + ("s" if key == "img_id" else "")] = self.database[key][nns]
        return out

    __call__ = search
