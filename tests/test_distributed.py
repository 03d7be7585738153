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


def in_two_processes(fn, tmp_path, machines=1, per_machine=2):
    """Run ``fn(env, tmp_path)`` on every rank of a gloo group of ``machines`` simulated
    machines with ``per_machine`` processes each; raise if any fails."""
    world = machines * per_machine
    mp.spawn(_worker, args=(fn, free_port(), tmp_path, world, per_machine), nprocs=world,
             join=True)


def _worker(rank, fn, port, tmp_path, world, per_machine):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(DistEnv(rank, world, rank % per_machine), tmp_path)
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
    from conftest import REPO, train_argv

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "scripts" / "oom_on_rank_1.py"),
           *train_argv(demo_data, tmp_path / "run", "--epochs", "2", "--batch-size", "16")]
    tic = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.monotonic() - tic
    assert proc.returncode != 0
    # 36 training images over 2 ranks at batch 16: 3 steps of 6 images on each rank
    assert "error: CUDA out of memory in training with micro-batches of 6 images at 32px; " \
           "rerun with --accum-steps 2 " in proc.stderr, proc.stderr[-3000:]
    assert seconds < 120, seconds


def _prepare_on_two_machines(env, tmp_path):
    import coco4.data.cache as cache
    from coco4.data.prepare import prepare_train_data

    from conftest import train_args

    real_write = cache._write_cache

    def write(path, *args):
        with open(tmp_path / "builds.txt", "a") as f:  # O_APPEND: one whole line per write
            f.write(f"{env.rank} {path.parent.name}\n")
        return real_write(path, *args)

    cache._write_cache = write
    machine = env.rank // 2
    cfg = train_args(tmp_path / "demo", tmp_path / "run", workers=0, batch_size=16,
                     cache_dir=str(tmp_path / f"machine{machine}"))
    data = prepare_train_data(cfg.data_spec, env, torch.device("cpu"), False, lambda message: None)
    (x, _), *_ = data.train.iterate(0)  # every rank reads pixels from its machine's cache
    assert x.shape[1:] == (3, 32, 32) and int(x.max()) > 0


def test_each_machine_builds_its_image_cache_once_while_its_other_ranks_wait(demo_data,
                                                                              tmp_path):
    """Two machines of two processes each, with local disks (a cache folder each): each
    machine's local rank 0 builds its cache, no other rank builds one, and every rank reads it."""
    (tmp_path / "demo").symlink_to(demo_data)
    in_two_processes(_prepare_on_two_machines, tmp_path, machines=2, per_machine=2)
    builds = sorted((tmp_path / "builds.txt").read_text().splitlines())
    assert builds == ["0 machine0", "2 machine1"]
    for machine in ("machine0", "machine1"):
        assert len(list((tmp_path / machine).glob("*.u8"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [(), ("--model-ema", "--model-ema-decay", "0.99")],
                         ids=["default", "model-ema"])
def test_torchrun_validation_equals_a_single_process_evaluation(demo_data, tmp_path, recipe):
    """Two processes validate an odd number of held-out images (11: rank 0 takes 6, rank 1
    takes 5); their summed metrics must be evaluate.py's on those 11 in one process. Rank 0's
    share alone, or an image counted twice to even the shares, gives other numbers. With
    --model-ema, every rank validates the one average best.pt holds (rank 1's own BatchNorm
    statistics went into its copy)."""
    from test_metrics import assert_validation_equals_evaluate

    from conftest import train_cli

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_cli(demo_data, out, "--epochs", "1", "--val-fraction", "0.25", *recipe)[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2 processes" in proc.stdout
    assert assert_validation_equals_evaluate(demo_data, out, tmp_path, 0.25) == 11
