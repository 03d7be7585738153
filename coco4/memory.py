"""What to do when a batch does not fit in GPU memory: name the --accum-steps that will."""
import math

import torch


def out_of_memory_advice(cfg, model, amp, device, env):
    """A one-line message naming an --accum-steps that fits, found by trying smaller
    micro-batches on the GPU (halving from the one that failed); under torchrun, or on other
    devices, double it."""
    local = math.ceil(cfg.batch_size / env.world)
    micro = math.ceil(local / cfg.accum_steps)
    # under torchrun the bare model's backward would still fire DDP's gradient hooks: no probe
    fits = None if env.enabled else _largest_micro_batch(model, amp, device, cfg.image_size,
                                                          micro // 2)
    accum = math.ceil(local / fits) if fits else cfg.accum_steps * 2
    return (f"CUDA out of memory with micro-batches of {micro} images at {cfg.image_size}px; "
            f"rerun with --accum-steps {accum} (micro-batches of {math.ceil(local / accum)}, "
            "the same effective batch and results)")


def _largest_micro_batch(model, amp, device, image_size, start):
    if device.type != "cuda":
        return None
    size = start
    while size >= 1:
        try:
            with torch.cuda.device(device):
                torch.cuda.empty_cache()
            x = torch.randn(size, 3, image_size, image_size, device=device)
            with amp.autocast():
                model(x).float().sum().backward()
            model.zero_grad(set_to_none=True)
            # 3/4 of what just fitted: leave room for the optimizer step and fragmentation
            return max(1, size * 3 // 4)
        except torch.cuda.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            size //= 2
    return None
