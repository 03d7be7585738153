"""From COCO annotations to batches: the 4-class lists, reading images, the decoded-image
cache, the image protocol and its batched twin, and the batches both data paths make."""
