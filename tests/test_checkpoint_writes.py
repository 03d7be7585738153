"""What a run writes to disk (#34): best.pt holds the model and what describes it, no training
state; last.pt is written on --save-every's cadence, at the end and at a stop, best.pt with
it; a stopped run resumed from what was written ends as an uninterrupted one."""
import itertools
import shutil

import pytest
import torch

from coco4 import checkpoint, trainer
from coco4.checkpoint import load_model, read_file
from coco4.interrupt import Interrupted, StopRequest
from coco4.trainer import fit

from conftest import read_csv, run_script, train_args, train_argv

TRAINING_STATE = ("optimizer", "scheduler", "scaler", "trained_model", "ema")


@pytest.fixture
def writes(monkeypatch):
    """Every checkpoint file a run writes, in order: (name, bytes)."""
    written = []
    save = checkpoint.save_checkpoint

    def recorded(path, payload, *copies):
        save(path, payload, *copies)
        written.append((path.name, path.stat().st_size))
    monkeypatch.setattr(checkpoint, "save_checkpoint", recorded)
    return written


def test_best_pt_holds_the_model_and_its_description_not_the_training_state(demo_data,
                                                                            tmp_path):
    fit(train_args(demo_data, tmp_path, epochs=3, model_ema=True), progress=False)
    best, last = read_file(tmp_path / "best.pt"), read_file(tmp_path / "last.pt")
    assert not set(TRAINING_STATE) & set(best) and set(TRAINING_STATE) <= set(last)
    assert best["kind"] == "best" and best["epoch"] == best["run"]["best_epoch"]
    assert best["metrics"] == best["run"]["history"][best["epoch"] - 1]  # its epoch's row
    for key in ("classes", "config", "run_options", "temperature", "data"):
        assert key in best, key
    loaded = load_model(tmp_path / "best.pt")  # the average, rebuilt from the file alone
    assert all(torch.equal(loaded.model.net.state_dict()[k], v) for k, v in best["model"].items())
    # the tiny backbone trains a larger share of its weights than ResNet-50 (docs: 35%)
    assert (tmp_path / "best.pt").stat().st_size < 0.5 * (tmp_path / "last.pt").stat().st_size


def test_a_resume_of_best_pt_names_the_last_pt_beside_it(trained_run, demo_data, tmp_path):
    ran = run_script("train", *train_argv(demo_data, tmp_path, "--resume",
                                          trained_run / "best.pt", "--epochs", "20"))
    assert ran.status == 2
    assert ran.error == (f"{trained_run / 'best.pt'} is a best.pt: the chosen model without "
                         f"the training state; resume from the last.pt beside it "
                         f"({trained_run / 'last.pt'}), or start a new run from its weights "
                         f"with --weights {trained_run / 'best.pt'}")


def test_a_short_run_writes_each_file_once_at_its_end(demo_data, tmp_path, writes):
    """Ten epochs within --save-every (300 s): best.pt and last.pt once each, in that order;
    at most 4.5 times one last.pt in all (#34's bound)."""
    fit(train_args(demo_data, tmp_path, epochs=10, lr=3e-3), progress=False)
    assert [name for name, _ in writes] == ["best.pt", "last.pt"]
    assert sum(size for _, size in writes) <= 4.5 * writes[-1][1]


def test_save_every_0_writes_last_pt_every_epoch_and_best_pt_at_each_improvement(
        demo_data, tmp_path, writes):
    fit(train_args(demo_data, tmp_path, epochs=4, lr=3e-3, save_every=0), progress=False)
    names = [name for name, _ in writes]
    assert names.count("last.pt") == 4
    history = read_file(tmp_path / "last.pt")["run"]["history"]
    scores = [row["val_acc"] for row in history]
    improved = sum(score > max(scores[:i], default=-1) for i, score in enumerate(scores))
    assert names.count("best.pt") == improved


def test_last_pt_follows_the_clock(demo_data, tmp_path, writes, monkeypatch):
    """Each read of the clock 60 s after the last: the run's start, each epoch's check and
    each save read it; at --save-every 150, last.pt at epochs 3 and 6 and at the end (7)."""
    clock = itertools.count(step=60)
    monkeypatch.setattr(trainer.time, "monotonic", lambda: next(clock))
    epochs_saved = []
    save = trainer.Training._save
    monkeypatch.setattr(trainer.Training, "_save", lambda self: (
        epochs_saved.append(self.state.epoch), save(self))[1])
    fit(train_args(demo_data, tmp_path, epochs=7, save_every=150), progress=False)
    assert epochs_saved == [3, 6, 7]


def test_a_run_stopped_between_saves_writes_both_and_resumes_as_a_straight_one(
        demo_data, tmp_path, monkeypatch):
    """A SIGTERM at epoch 2's end, long before --save-every: last.pt and best.pt are written
    then, and the resumed run ends with the uninterrupted run's files."""
    fit(train_args(demo_data, tmp_path / "straight", epochs=4, lr=3e-3), progress=False)
    with monkeypatch.context() as m:
        polls = []
        m.setattr(StopRequest, "requested", property(lambda self: polls.append(1) or
                                                     len(polls) > 2 * 6 - 1))  # 5 steps + the end
        with pytest.raises(Interrupted, match="at the end of epoch 2"):
            fit(train_args(demo_data, tmp_path / "cut", epochs=4, lr=3e-3), progress=False)
    assert read_file(tmp_path / "cut" / "last.pt")["run"]["epoch"] == 2
    assert (tmp_path / "cut" / "best.pt").exists()
    fit(train_args(demo_data, tmp_path / "cut", epochs=4, lr=3e-3,
                   resume=str(tmp_path / "cut" / "last.pt")), progress=False)
    for name in ("last.pt", "best.pt"):
        a, b = (read_file(tmp_path / run / name) for run in ("straight", "cut"))
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
        assert a["run"]["history"][-1]["val_loss"] == b["run"]["history"][-1]["val_loss"]


def test_a_resume_without_output_dir_goes_on_in_its_own_folder(run_copy, demo_data, tmp_path,
                                                                monkeypatch):
    """#35: it continued into ./checkpoint, leaving the run's own last.pt behind."""
    monkeypatch.chdir(tmp_path)
    rows = len(read_csv(run_copy / "metrics.csv"))
    argv = [a for a in train_argv(demo_data, run_copy) if a != str(run_copy)]
    argv = [a for a in argv if a != "--output-dir"]
    ran = run_script("train", *argv, "--resume", run_copy / "last.pt", "--epochs", str(rows + 1))
    assert ran.status == 0, ran.err[-2000:]
    assert len(read_csv(run_copy / "metrics.csv")) == rows + 1
    assert read_file(run_copy / "last.pt")["run"]["epoch"] == rows + 1
    assert not (tmp_path / "checkpoint").exists()


@pytest.mark.parametrize("field, value, problem", [
    ("best_metric", float("nan"), "run.best_metric is nan, not a score"),
    ("best_metric", 7.0, "run.best_metric is 7.0, not a score"),
    ("step", -5, "run.step is -5"),
])
def test_a_run_state_out_of_its_range_is_refused(run_copy, demo_data, field, value, problem):
    """#35: a NaN best score let no later epoch write best.pt; a negative step trained on."""
    ckpt = torch.load(run_copy / "last.pt", weights_only=True)
    ckpt["run"][field] = value
    torch.save(ckpt, run_copy / "last.pt")
    ran = run_script("train", *train_argv(demo_data, run_copy, "--resume", run_copy / "last.pt",
                                          "--epochs", "20"))
    assert ran.status == 2
    assert f"holds a training state this coco4 cannot resume ({problem})" in ran.error


def _damaged(ckpt):
    """An optimizer state whose group lists one parameter fewer than the model trains."""
    ckpt["optimizer"]["param_groups"][0]["params"] = ckpt["optimizer"]["param_groups"][0][
        "params"][:-1]


@pytest.mark.parametrize("damage, problem", [
    (lambda c: c["run"].update(history="epoch 1: 0.5"), "run.history is not a list of epoch "
                                                       "rows"),
    (lambda c: c["run"].update(epoch_sums={"loss_sum": 1.0}), "run.epoch_sums is {'loss_sum': "
                                                              "1.0}, not the sums"),
    (_damaged, "holds a training state that does not fit its own model and recipe "
               "(ValueError: "),
], ids=["history-as-text", "sums-without-sums", "optimizer-of-another-layout"])
def test_a_damaged_run_state_is_one_line_not_a_traceback(run_copy, demo_data, damage, problem):
    ckpt = torch.load(run_copy / "last.pt", weights_only=True)
    damage(ckpt)
    torch.save(ckpt, run_copy / "last.pt")
    ran = run_script("train", *train_argv(demo_data, run_copy, "--resume", run_copy / "last.pt",
                                          "--epochs", "20"))
    assert ran.status == 2 and problem in ran.error, ran.err[-1500:]


def test_a_tensorboard_folder_that_cannot_be_written_is_found_before_any_work(run_copy,
                                                                           demo_data):
    """#35: the resumed run trained its first epoch, then ended in a traceback."""
    shutil.rmtree(run_copy / "tensorboard")
    (run_copy / "tensorboard").write_text("a file where the folder goes")
    before = (run_copy / "last.pt").read_bytes()
    ran = run_script("train", *train_argv(demo_data, run_copy, "--resume", run_copy / "last.pt",
                                          "--epochs", "20"))
    assert ran.status == 2 and ran.error == (
        f"cannot write to {run_copy / 'tensorboard'}: {run_copy / 'tensorboard'} is not a "
        "folder; choose another folder or fix its permissions")
    assert (run_copy / "last.pt").read_bytes() == before and "epoch" not in ran.out


def test_a_resume_on_a_changed_train_list_is_refused(demo_data, tmp_path):
    """#35: a list whose content changed re-cut the held-out split silently (6 of 7 new
    held-out images had been trained on); the same list copied elsewhere resumes."""
    data = tmp_path / "data"
    shutil.copytree(demo_data / "data", data)
    fit(train_args(demo_data, tmp_path / "run", data_dir=str(data), epochs=1), progress=False)
    argv = [*train_argv(demo_data, tmp_path / "run", "--resume", tmp_path / "run" / "last.pt",
                        "--epochs", "2"), "--data-dir", data]  # the later --data-dir wins
    lines = (data / "annotation_train.txt").read_text().splitlines(keepends=True)
    (data / "annotation_train.txt").write_text("".join(lines[:-1]))
    ran = run_script("train", *argv)
    assert ran.status == 2 and ran.error.startswith(
        f"{data / 'annotation_train.txt'} is not the list {tmp_path / 'run' / 'last.pt'} was "
        f"trained on (its content changed: {len(lines)} images were listed then)")
    (data / "annotation_train.txt").write_text("".join(lines))
    ran = run_script("train", *argv)
    assert ran.status == 0, ran.err[-1500:]


def test_a_second_ctrl_c_while_the_stop_saves_loses_nothing(demo_data, tmp_path, monkeypatch,
                                                             capfd):
    """With --save-every, the stop's save holds epochs no file has yet: a second Ctrl-C during
    it (users press again when nothing seems to happen) waits for it instead of losing them;
    the first one says what it does."""
    import os
    import signal

    real_epoch, real_save = trainer.train_one_epoch, trainer.Training._save

    def epoch_with_a_ctrl_c(parts, batches, state, *args, **kwargs):
        if state.epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the first: a stop after this step
        return real_epoch(parts, batches, state, *args, **kwargs)

    def save_with_a_second_ctrl_c(self):
        if self.stop_vote is not None and self.state.epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the second, while the stop saves
        return real_save(self)

    monkeypatch.setattr(trainer, "train_one_epoch", epoch_with_a_ctrl_c)
    monkeypatch.setattr(trainer.Training, "_save", save_with_a_second_ctrl_c)
    with pytest.raises(Interrupted, match="stopped by SIGINT at epoch 2, step"):
        fit(train_args(demo_data, tmp_path, epochs=3), progress=False)
    assert read_file(tmp_path / "last.pt")["run"]["epoch"] == 1 and (tmp_path / "best.pt").exists()
    err = capfd.readouterr().err  # written with os.write, from the signal handler
    assert "SIGINT: stopping after this step and saving last.pt" in err
    assert "saving last.pt before stopping" in err


def test_a_first_signal_during_a_routine_save_still_stops_the_run():
    """Review of the above: the save under protection is every save; a SIGTERM arriving during
    a routine one (a preemption) must still be noted, not only announced."""
    import os
    import signal

    with StopRequest() as stop:
        with stop.protected():
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
