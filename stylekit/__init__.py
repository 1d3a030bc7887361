"""stylekit: turn photographs into artistic styles with Stable Diffusion and style adapters.

The package backs the course notebooks; each module owns one step of the story
(see the repository's README and DESIGN notes). Import what you need, e.g.
``from stylekit.models import load_pipeline``.
"""

import logging

__version__ = "0.1.0"


class _TorchvisionNotice(logging.Filter):
    """diffusers imports CLIP's image processors, which stylekit never uses; their notice that torchvision is absent is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionNotice())
