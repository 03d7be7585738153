"""coco4: fine-tune ResNet-50 (or another registered torchvision backbone) on 4 COCO 2017
classes (bird, airplane, train, boat).

The entry scripts at the repository root are thin; everything they do lives here.
"""
