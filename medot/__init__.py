"""medot: optimal-transport methods for medical imaging on frozen vision-language backbones."""

__version__ = "0.1.0"

from medot.errors import MedotError

__all__ = ["MedotError", "__version__"]
