"""Entry point of the medot app (also the Hugging Face Space's app_file): ``python app.py --help``."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.server import main  # noqa: E402

if __name__ == "__main__":
    main()
