from setuptools import find_packages, setup

setup(
    name="latent-diffusion",
    version="0.1.0",
    description="Latent diffusion models (Rombach et al., CVPR 2022): training and sampling",
    packages=find_packages(include=["ldm", "ldm.*"]),
    py_modules=["main"],
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "pytorch-lightning>=2.1,<3",
        "omegaconf>=2.3",
        "einops>=0.7",
        "transformers>=4.40",
        "kornia>=0.7",
        "numpy>=1.24",
        "pillow>=10",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "scipy>=1.10",
        "tensorboard>=2.14",
        "scann>=1.3; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "torch-fidelity>=0.3",
        "torchmetrics>=1.0",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6"],
    },
)
