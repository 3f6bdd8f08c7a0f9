"""Datasets and the Lightning data module of the latent-diffusion codebase (Rombach et al., CVPR 2022).

Every dataset yields dicts whose image entries are ``(H, W, C)`` float32 arrays in [-1, 1], the batch
format that every model's ``get_input`` expects. The submodules are imported by their class paths
(``ldm.data.lsun.LSUNChurchesTrain``, ``ldm.data.synthetic.SyntheticShapesTrain``, ...); this package
imports none of them eagerly, so importing one dataset does not pull in Lightning or the others.

- ``base``: shared image helpers and ``Txt2ImgIterableBaseDataset``.
- ``synthetic``: the embedded demo dataset (coloured shapes drawn by code, no download).
- ``custom``: users' own data (image folders, captioned images, inpainting, super-resolution).
- ``lsun``, ``imagenet``, ``faceshq``, ``openimages``, ``landscapes``, ``previews``: the datasets the
  original configs name, read from local files.
- ``datamodule``: ``DataModuleFromConfig`` and ``WrappedDataset`` (re-exported by ``main``).
"""
