"""Everything a training run checks before any work, in one place (as detectron2's
``default_setup`` prepares a run before its trainer exists): the output folder locked and
checked (one run per folder, never another run's files replaced unasked), the run to resume
read and its recipe merged with this command line, the folders it writes checked, and the
compiler checked. The trainer then only resumes, prepares the data and builds the parts."""
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import LoadedModel
from .compiling import check_compile_tools
from .config import TrainConfig
from .distributed import DistEnv, pick_device
from .errors import Coco4Error
from .fileio import check_writable, same_file
from .resume import check_same_list, load_resumable, resumed_config
from .run_folder import earlier_run, run_lock


@dataclass
class Ready:
    """A run that passed every check: its settings (a resumed run's recipe from its
    checkpoint), its device, the checkpoint it resumes, and an earlier run's files in its
    folder that --overwrite lets it delete once the data and the model are built."""

    cfg: TrainConfig
    device: torch.device
    resumed: LoadedModel | None = None
    earlier: list[Path] = field(default_factory=list)


@contextlib.contextmanager
def preflight(cfg: TrainConfig, env: DistEnv, say: Callable[[str], None]) -> Iterator[Ready]:
    """Check ``cfg``'s run before any work and hold its output folder for the block (rank 0
    writes the run's files: it holds the lock for the run's lifetime)."""
    lock = run_lock(cfg.output_dir, say) if env.is_main else contextlib.nullcontext()
    with lock:
        device = pick_device(cfg.device, env)
        resumed = load_resumable(cfg.resume) if cfg.resume else None
        if resumed:
            cfg = resumed_config(cfg, resumed, say if env.is_main else lambda m: None)
            check_same_list(cfg, resumed)
        if cfg.cache_dir:  # asked for by name: an error, not the fallback a default folder gets
            check_writable(cfg.cache_dir)
        if cfg.compile:
            check_compile_tools(device)
        # the folder is checked by rank 0, which holds it; the other ranks write nothing there
        earlier = _folder_check(cfg, resumed is not None) if env.is_main else []
        if env.is_main:  # written after the first epoch: a bad folder found then lost it
            check_writable(Path(cfg.output_dir) / "tensorboard")
        yield Ready(cfg, device, resumed, earlier)


def _folder_check(cfg: TrainConfig, resuming: bool) -> list[Path]:
    """An earlier run's files in the output folder, which --overwrite lets this run replace;
    without it, or where the run would delete its own --weights, an error."""
    if resuming:
        return _check_resume_folder(cfg)
    earlier = earlier_run(cfg.output_dir, cfg.overwrite)
    weights = [p for p in earlier if cfg.weights not in ("imagenet", "none")
               and same_file(p, cfg.weights)]
    if weights:  # loaded first, then deleted with the earlier run: the user's file gone
        raise Coco4Error(f"--weights {cfg.weights} is the earlier run's {weights[0].name} in "
                         f"{cfg.output_dir}, which --overwrite deletes; copy it elsewhere "
                         "first, or choose another --output-dir")
    return earlier


def _check_resume_folder(cfg: TrainConfig) -> list[Path]:
    """A resumed run writes last.pt, best.pt and metrics.csv into --output-dir: unless that is
    the folder whose last.pt it resumes, the folder must hold no other run's files (--overwrite
    returns them for deletion; the file resumed is never among them), or two runs would mix."""
    folder, resume = Path(cfg.output_dir), Path(cfg.resume)
    if same_file(folder / "last.pt", resume):
        return []  # the usual case: the run goes on where it was
    earlier = [p for p in earlier_run(folder, overwrite=True) if not same_file(p, resume)]
    if earlier and not cfg.overwrite:
        where = (f"resume {folder / 'last.pt'}" if same_file(folder, resume.parent)
                 else "resume into the folder of --resume")
        raise Coco4Error(f"{folder} holds another run ({', '.join(p.name for p in earlier)}), "
                         f"which resuming {resume} there would mix with it; {where}, choose "
                         "another --output-dir, or pass --overwrite to replace that run")
    return earlier
