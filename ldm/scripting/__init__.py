"""Helpers shared by the command-line tools in ``scripts/`` (sampling the latent diffusion models of
Rombach et al., CVPR 2022), one module per concern:

- ``inputs``: files and download hints, configs, prompt files, the latent geometry of a config;
- ``loading``: device, seed, a model from config + checkpoint, its EMA weights;
- ``sampler_options``: the sampler the options name, checked with its eta;
- ``generate``: the generation loop (batches, seeds, sampler, decoding) and one batch from a sampler;
- ``outputs``: decoding, images, grids and arrays saved atomically, output folders, the summary;
- ``class_labels``: ImageNet class indices from names and synset ids;
- ``cli``: the shared options, argument checks and the scripts' entry point.
"""
