"""Serve a trained checkpoint over HTTP on this machine: an upload page and a JSON API.

    python serve.py --checkpoint checkpoint/best.pt        # http://127.0.0.1:8000/
    curl -F file=@photo.jpg http://127.0.0.1:8000/predict  # {"predictions": [...]}
    curl http://127.0.0.1:8000/health                      # classes and input size

FastAPI + uvicorn, one model in memory; the same probabilities as predict.py. Ctrl-C or
SIGTERM stops it. More: docs/serve.md.
"""
from coco4 import cli, options

with cli.quiet_startup(__name__):  # Ctrl-C while torch imports: one line
    from coco4.serving import ServeOptions, serve


def get_args_parser():
    return options.parser("Serve a checkpoint over HTTP: an upload page and a JSON API.",
                          ServeOptions)


def main(args):
    return serve(options.from_args(ServeOptions, args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
