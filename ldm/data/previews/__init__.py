"""The text-to-image "previews" dataset class paths of the original LDM-KL-8-G config (Rombach et al., CVPR 2022)."""
