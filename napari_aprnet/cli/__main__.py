"""``python -m napari_aprnet.cli``."""
import sys

from napari_aprnet.cli.main import main

sys.exit(main())
