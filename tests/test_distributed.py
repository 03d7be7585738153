"""What torchrun's processes must agree on, with two real gloo processes on the CPU: when to
stop (without a host sync per step), and which BatchNorm statistics are validated and saved."""
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from coco4.distributed import DistEnv, StopVote, broadcast_buffers

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo over localhost")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_two_processes(fn, tmp_path):
    """Run ``fn(env, tmp_path)`` on ranks 0 and 1 of a gloo group; raise if either fails."""
    port = free_port()
    mp.spawn(_worker, args=(fn, port, tmp_path), nprocs=2, join=True)


def _worker(rank, fn, port, tmp_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        fn(DistEnv(rank, 2, rank), tmp_path)
    finally:
        dist.destroy_process_group()


def _vote(env, tmp_path):
    vote = StopVote(env)
    # rank 1 is asked to stop at step 2; both ranks learn it at step 3, not before
    answers = [vote(env.rank == 1 and step >= 2) for step in range(5)]
    (tmp_path / f"vote{env.rank}").write_text(" ".join(map(str, map(int, answers))))
    assert vote.result()  # the vote still in flight is collected too


def test_every_rank_stops_at_the_same_step_one_step_after_the_request(tmp_path):
    in_two_processes(_vote, tmp_path)
    assert (tmp_path / "vote0").read_text() == (tmp_path / "vote1").read_text() == "0 0 0 1 1"


def test_a_single_process_answers_at_once():
    vote = StopVote(DistEnv())
    assert vote(False) is False and vote(True) is True and vote.result() is False


def _buffers(env, tmp_path):
    torch.manual_seed(env.rank)  # each rank's own statistics, as after its own last batch
    bn = torch.nn.BatchNorm1d(3)
    bn.train()
    bn(torch.randn(8, 3) * (env.rank + 1))
    broadcast_buffers(bn, env)
    torch.save(dict(bn.state_dict()), tmp_path / f"bn{env.rank}.pt")


def test_validation_uses_rank_0s_batchnorm_statistics_on_every_rank(tmp_path):
    in_two_processes(_buffers, tmp_path)
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm1d(3)
    reference(torch.randn(8, 3))  # rank 0's batch, worked out here
    for rank in (0, 1):
        got = torch.load(tmp_path / f"bn{rank}.pt", weights_only=True)
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(got[key], reference.state_dict()[key]), (rank, key)


@pytest.mark.slow
def test_out_of_memory_on_one_rank_ends_every_rank_promptly_with_the_advice(demo_data, tmp_path):
    """Not a hang until the collective timeout (10 minutes with NCCL, 30 with gloo): the
    failing rank says what to do and exits, the other's next stop vote fails at once."""
    from conftest import REPO, train_cli

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "scripts" / "oom_on_rank_1.py"),
           *train_cli(demo_data, tmp_path / "run", "--epochs", "2", "--batch-size", "4")[2:]]
    tic = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.monotonic() - tic
    assert proc.returncode != 0
    assert "error: CUDA out of memory in training with micro-batches of 2 images at 32px; " \
           "rerun with --accum-steps 2 " in proc.stderr, proc.stderr[-3000:]
    assert seconds < 120, seconds
