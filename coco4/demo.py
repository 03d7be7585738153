"""``python -m coco4.demo``: the command the README gives; the demo lives in coco4.devtools."""
from .cli import run
from .devtools.demo import get_args_parser, main

if __name__ == "__main__":
    run(main, get_args_parser())
