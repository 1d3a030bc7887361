"""stylekit: turn photographs into artistic styles with Stable Diffusion and style adapters.

The package backs the course notebooks; each module owns one step of the story
(see the repository's README and DESIGN notes). Import what you need, e.g.
``from stylekit.models import load_pipeline``.
"""

__version__ = "0.1.0"
