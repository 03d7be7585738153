"""What the CUDA path decides from what torch.cuda reports, checked on the CPU with those
answers stood in: which GPU a process uses, and which mixed precision it trains in."""
import pytest
import torch

from coco4.distributed import DistEnv, pick_device
from coco4.inference import Amp


@pytest.fixture
def fake_gpus(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d)))
    return chosen


def test_cuda_n_becomes_the_current_device_of_a_single_process(fake_gpus):
    """Otherwise pinned memory, bare "cuda" tensors, the bf16 check and memory queries all go
    to GPU 0 while training runs on GPU 1."""
    assert pick_device("cuda:1", DistEnv()) == torch.device("cuda", 1)
    assert fake_gpus == [torch.device("cuda", 1)]
    assert pick_device("cuda", DistEnv()) == torch.device("cuda", 0)
    assert pick_device("auto", DistEnv(rank=3, world=4, local_rank=1)) == torch.device("cuda", 1)
    assert fake_gpus[1:] == [torch.device("cuda", 0), torch.device("cuda", 1)]


@pytest.mark.parametrize("native, dtype, scaled", [(True, torch.bfloat16, False),
                                                   (False, torch.float16, True)],
                         ids=["ampere-or-later", "v100-t4"])
def test_bf16_only_where_the_gpu_computes_in_it(monkeypatch, native, dtype, scaled):
    # torch counts emulated bf16 (V100, T4) as supported unless asked not to
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    amp = Amp.for_device(torch.device("cuda", 0), True)
    assert amp.dtype == dtype
    assert amp.scaler().is_enabled() == scaled  # fp16 needs loss scaling, bf16 does not
    assert Amp.for_device(torch.device("cuda", 0), False).dtype is None  # --no-amp
