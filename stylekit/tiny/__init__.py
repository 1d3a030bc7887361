"""The embedded tiny Stable Diffusion and its offline world.

- :mod:`stylekit.tiny.pretrain`: the architecture, tokenizer and pretraining (``python -m stylekit.tiny train``).
- :mod:`stylekit.tiny.card`: measures a pretrained model and writes its model card (``python -m stylekit.tiny.card``).
- :mod:`stylekit.tiny.corpus`: the pretraining corpus (wallpapers from Debian packages) and generic artistic renderings.
- :mod:`stylekit.tiny.synth`: the demo world: procedural scenes and the five demo style filters.
- ``model/``: the shipped weights, in the diffusers layout, with their model card.
"""
