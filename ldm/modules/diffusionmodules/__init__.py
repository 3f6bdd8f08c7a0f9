"""The denoising U-Net (ADM, Dhariwal & Nichol 2021) and the helpers it is built from."""
