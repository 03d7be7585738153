"""Developer tooling, apart from the product: synthetic COCO-format data, the demo and the
benchmark."""
