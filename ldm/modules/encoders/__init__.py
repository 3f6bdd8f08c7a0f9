"""Conditioning encoders: class labels, BERT-style and CLIP text encoders, spatial rescalers."""
