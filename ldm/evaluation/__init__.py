"""Evaluation of latent diffusion models and their autoencoders (Rombach et al., CVPR 2022).

- :mod:`ldm.evaluation.metrics`: FID (Heusel et al. 2017), Inception Score (Salimans et al. 2016),
  KID (Binkowski et al. 2018) and improved precision/recall (Kynkaenniemi et al. 2019) on features,
  computed by torch-fidelity; PSNR and SSIM (Wang et al. 2004) on images.
- :mod:`ldm.evaluation.inception`: the TF-ported Inception-v3 that FID is defined on (torch-fidelity's),
  its weights file found locally, and feature extraction with a progress bar (pool, logits, and the
  spatial features of sFID, Nash et al. 2021).
- :mod:`ldm.evaluation.dinov2`: DINOv2 features (Oquab et al. 2023) for FD_DINOv2 (Stein et al. 2023),
  from local weights.
- :mod:`ldm.evaluation.clip_score`: the CLIP score (Hessel et al. 2021) of samples against their captions.
- :mod:`ldm.evaluation.image_sets`: image sets from a folder, a sampling script's ``.npz`` or ADM's
  reference batches, checked before any long work, hashed by content for the feature cache.
- :mod:`ldm.evaluation.evaluate`: samples against a reference, the table and the JSON.
- :mod:`ldm.evaluation.reconstruction`: rFID, PSNR, SSIM and LPIPS of a first stage's reconstructions.
- :mod:`ldm.evaluation.zoo`: the model-zoo registry (``models/model_zoo.yaml``) and reproducing a row.
- :mod:`ldm.evaluation.shapes`: the embedded default: a small classifier of the generated shapes
  whose features give a Frechet distance and whose predictions give the class accuracy of samples.
- :mod:`ldm.evaluation.demo_eval`: the demo model's class accuracy and Frechet distance under that classifier.
- :mod:`ldm.evaluation.study`: quality against the number of model evaluations, for every sampler.
"""
