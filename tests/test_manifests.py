"""Every original config builds into a model whose state-dict keys and shapes equal the manifest
taken from the original implementation, so the released checkpoints load with strict=True."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import PARITY, REPO, require_parity
from ldm.util import instantiate_from_config

MANIFESTS = sorted((PARITY / "manifests").glob("*.json")) if PARITY else []


def _drop_ckpt_paths(node):
    if isinstance(node, dict):
        return {k: _drop_ckpt_paths(v) for k, v in node.items() if k != "ckpt_path"}
    if isinstance(node, list):
        return [_drop_ckpt_paths(v) for v in node]
    return node


def test_every_original_config_has_a_manifest():
    require_parity()
    assert len(MANIFESTS) == 32
    for path in MANIFESTS:
        config = json.loads(path.read_text())["config"]
        assert (REPO / config).is_file(), f"{config} is missing from the repository"


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_state_dict_matches_manifest(manifest):
    expected = json.loads(manifest.read_text())
    config = OmegaConf.load(REPO / expected["config"])
    model_cfg = OmegaConf.create(_drop_ckpt_paths(OmegaConf.to_container(config.model, resolve=True)))
    assert model_cfg.target == expected["target"]
    with torch.device("meta"):
        model = instantiate_from_config(model_cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = expected["keys"]
    missing = sorted(set(ref) - set(ours))
    unexpected = sorted(set(ours) - set(ref))
    assert not missing and not unexpected, (
        f"{expected['config']}: {len(missing)} keys missing (first: {missing[:5]}), "
        f"{len(unexpected)} unexpected (first: {unexpected[:5]})")
    wrong = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert not wrong, f"{expected['config']}: shapes differ (ours, reference): {dict(list(wrong.items())[:5])}"
    assert sum(v.numel() for v in model.state_dict().values()) == expected["n_params"]
