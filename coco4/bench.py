"""``python -m coco4.bench``: the command the README gives; the benchmark itself lives in
coco4.devtools."""
from .cli import run
from .devtools.bench import get_args_parser, main

if __name__ == "__main__":
    run(main, get_args_parser())
