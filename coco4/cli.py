"""What every entry script shares: turn a Coco4Error into one line on stderr and an exit code."""
import sys

from .errors import Coco4Error


def run(main, parser, argv=None):
    """Parse ``argv``, call ``main(args)``, and exit with its status (an int return, or 0)."""
    args = parser.parse_args(argv)
    try:
        status = main(args)
    except Coco4Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    sys.exit(status if isinstance(status, int) else 0)
