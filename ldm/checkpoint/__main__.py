"""``python -m ldm.checkpoint {convert IN OUT | info PATH}`` (`ldm.checkpoint.cli`)."""
import sys

from ldm.checkpoint.cli import main

sys.exit(main())
