"""``python -m ldm.checkpoint {convert IN OUT | info PATH}`` (`ldm.checkpoint.commands`)."""
import sys

from ldm.checkpoint.commands import main

sys.exit(main())
