"""The recipe's options beyond the original's (coco4/training.py, coco4/mixing.py,
coco4/ema.py): the LR schedule (warmup, cosine, its floor), mixup and cutmix, early stopping,
the model EMA; each checked against numbers worked by hand or torch's own, through a real run,
and across a stop and a resume."""
import math

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from coco4 import options, trainer
from coco4.checkpoint import load_model, read_file
from coco4.config import RECIPES, Recipe, TrainConfig
from coco4.ema import ModelEma, decay_per_update
from coco4.errors import Coco4Error
from coco4.interrupt import Interrupted, StopRequest
from coco4.mixing import MixupCutmix
from coco4.seeding import generator
from coco4.trainer import fit
from coco4.training import build_scheduler, warmup_then_cosine

import train
from conftest import (
    check_against_direct,
    direct_predictions,
    eval_argv,
    read_csv,
    run_script,
    train_args,
    train_argv,
)

STEPS = 5  # the demo's 36 training images in batches of 8: 5 optimizer steps an epoch


def test_warmup_then_cosine_worked_by_hand():
    # 4 warmup steps from 1/100 of the LR, then a cosine over the 8 steps left, to a floor of 0.1
    by_hand = [0.01, 0.2575, 0.505, 0.7525, 1.0]
    by_hand += [0.1 + 0.9 * (1 + math.cos(math.pi * k / 8)) / 2 for k in range(1, 9)]
    got = [warmup_then_cosine(k, 4, 12, 0.1) for k in range(13)]
    assert got == pytest.approx(by_hand)
    assert warmup_then_cosine(20, 4, 12, 0.1) == pytest.approx(0.1)  # past the end: the floor


def test_the_scheduler_steps_the_optimizers_lr_as_the_formula_says():
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.2)
    schedule = build_scheduler(Recipe(lr=0.2, lr_scheduler="cosine", lr_warmup_epochs=1,
                                      lr_min=0.02, epochs=3), optimizer, steps_per_epoch=2)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_step()
    floor = 0.1  # lr_min / lr
    expected = [0.2 * warmup_then_cosine(k, 2, 6, floor) for k in range(6)]
    assert seen == pytest.approx(expected) and seen[0] == pytest.approx(0.002)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)  # the floor at the end


def test_a_warmup_before_the_plateau_schedule(demo_data, tmp_path):
    """metrics.csv's lr: the warmup's first LR (1/100) in epoch 1, the full LR after it."""
    fit(train_args(demo_data, tmp_path, epochs=3, lr=1e-3, lr_warmup_epochs=1), progress=False)
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "metrics.csv")]
    assert lrs == pytest.approx([1e-5, 1e-3, 1e-3])


def test_the_plateau_schedule_lowers_the_lr_down_to_its_floor():
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=1e-3)
    schedule = build_scheduler(Recipe(lr=1e-3, plateau_patience=0, plateau_factor=0.1,
                                      lr_min=2e-5), optimizer, steps_per_epoch=3)
    seen = []
    for loss in (1.0, 1.0, 1.0, 1.0):  # no improvement after the first epoch
        schedule.after_epoch(loss)
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([1e-3, 1e-4, 2e-5, 2e-5])


def test_a_cosine_run_follows_the_formula_epoch_by_epoch(demo_data, tmp_path):
    fit(train_args(demo_data, tmp_path, epochs=3, lr=1e-3, lr_scheduler="cosine"),
        progress=False)
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "metrics.csv")]
    total = 3 * STEPS
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * e * STEPS / total)) / 2
                                 for e in range(3)])


def test_a_cosine_resumed_with_more_epochs_keeps_the_curve_it_started_on():
    """The horizon is stored with the schedule: more --epochs on a resume train at the floor
    after the old end, instead of the LR jumping up to a new curve."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.1)
    first = build_scheduler(Recipe(lr=0.1, lr_scheduler="cosine", epochs=4), optimizer, 5)
    for _ in range(12):
        optimizer.step()
        first.after_step()
    saved, lr = first.state_dict(), optimizer.param_groups[0]["lr"]
    again = build_scheduler(Recipe(lr=0.1, lr_scheduler="cosine", epochs=8), optimizer, 5)
    again.load_state_dict(saved)
    optimizer.param_groups[0]["lr"] = lr  # as optimizer.load_state_dict restores it
    seen = []
    for _ in range(12):
        optimizer.step()
        again.after_step()
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1 * warmup_then_cosine(k, 0, 20, 0.0) for k in range(13, 25)])


def pixels(n=6, side=8):
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)


def test_mixup_blends_each_image_with_its_neighbour_and_the_targets_alike():
    images, labels = pixels(), torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, targets = MixupCutmix(4, mixup_alpha=0.4)(images, labels, generator(0, "t", 1))
    share = float(targets[0, 0])  # image 0 (class 0) mixed with image 5 (class 1)
    assert 0 < share < 1 and float(targets[0, 1]) == pytest.approx(1 - share)
    assert targets.sum(1).tolist() == pytest.approx([1.0] * 6)
    for i in range(6):
        neighbour = (i - 1) % 6
        by_hand = (images[i].double() * share + images[neighbour].double() * (1 - share))
        assert (mixed[i].double() - by_hand).abs().max() <= 0.5 + 1e-6
        expected = torch.zeros(4)
        expected[labels[i]] += share
        expected[labels[neighbour]] += 1 - share
        assert targets[i].tolist() == pytest.approx(expected.tolist())
    assert mixed.dtype == torch.uint8


def test_cutmix_pastes_one_box_of_the_neighbour_and_the_share_is_what_each_keeps():
    images, labels = pixels(side=16), torch.tensor([0, 1, 2, 3, 0, 1])
    for step in range(20):
        mixed, targets = MixupCutmix(4, cutmix_alpha=1.0)(images, labels,
                                                           generator(0, "t", step))
        from_neighbour = (mixed != images).any(1)  # [N, H, W]: pixels taken from the other
        same_box = from_neighbour | (mixed == images.roll(1, 0)).all(1)
        assert (mixed == torch.where(same_box[:, None], images.roll(1, 0), images)).all()
        kept = 1 - same_box[0].float().mean().item()  # a box of the same place in every image
        assert float(targets[0, 0]) == pytest.approx(kept, abs=1e-6) or labels[0] == labels[5]


def test_the_step_generator_decides_every_draw_and_both_kinds_occur():
    images, labels = pixels(), torch.tensor([0, 1, 2, 3, 0, 1])
    both = MixupCutmix(4, mixup_alpha=0.2, cutmix_alpha=1.0)
    a = both(images, labels, generator(0, "batch", 1, 2))
    b = both(images, labels, generator(0, "batch", 1, 2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    kinds = set()
    for step in range(30):
        mixed, _ = both(images, labels, generator(0, "batch", 1, step))
        # cutmix leaves pixels of each image untouched; mixup moves nearly all of them
        kinds.add("cutmix" if (mixed == images).float().mean() > 0.3 else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_early_stopping_stops_a_run_that_does_not_improve_and_says_so(demo_data, tmp_path):
    """--patience 2: an LR so large that the run only gets worse leaves epoch 1 the best; the
    run stops after epoch 3, says so, and a resume of it is one line."""
    out = tmp_path / "run"
    ran = run_script("train", *train_argv(demo_data, out, "--epochs", "8", "--lr", "0.5",
                                          "--patience", "2"))
    assert ran.status == 0, ran.err[-2000:]
    assert "stopped early after epoch 3: 2 epochs without a better held-out accuracy" in ran.out
    assert len(read_csv(out / "metrics.csv")) == 3
    last = read_file(out / "last.pt")
    assert last["run"]["stopped_early"] == 3 and last["run"]["best_epoch"] == 1
    again = run_script("train", *train_argv(demo_data, out, "--resume", out / "last.pt",
                                            "--epochs", "8", "--patience", "2"))
    assert again.status == 2 and "has gone 2 epochs without a better held-out accuracy (its " \
        "best: epoch 1), and --patience is 2" in again.error
    longer = run_script("train", *train_argv(demo_data, out, "--resume", out / "last.pt",
                                             "--epochs", "5", "--patience", "0"))
    assert longer.status == 0 and len(read_csv(out / "metrics.csv")) == 5, longer.err[-2000:]


def test_patience_counts_from_the_last_improvement_across_a_resume(demo_data, tmp_path):
    fit(train_args(demo_data, tmp_path, epochs=2, lr=0.5), progress=False)
    summary = fit(train_args(demo_data, tmp_path, epochs=8, lr=0.5, patience=2,
                             resume=str(tmp_path / "last.pt")), progress=False)
    assert summary["stopped_early"] == 3  # epoch 1 the best: two more, and the first resumed


EVERY_OPTION = {"epochs": 4, "lr": 1e-3, "mixup_alpha": 0.2, "cutmix_alpha": 1.0,
                "label_smoothing": 0.1, "lr_scheduler": "cosine", "lr_warmup_epochs": 1,
                "lr_min": 1e-5, "patience": 2, "accum_steps": 2, "auto_augment": "ta_wide",
                "random_erase": 0.25, "model_ema": True, "model_ema_decay": 0.99}


@pytest.mark.parametrize("recipe, polls_before_the_stop", [
    (EVERY_OPTION, 2 * (STEPS + 1) + 2),  # each step polls, and each epoch's end: mid-epoch 3
    (EVERY_OPTION, 2 * (STEPS + 1) - 1),  # at the end of epoch 2
    ({"epochs": 4, "lr": 1e-3, "lr_warmup_epochs": 3, "mixup_alpha": 0.4,  # cut mid-warmup
      "auto_augment": "ra"}, 2 * (STEPS + 1) + 2),
], ids=["cosine", "cosine-epoch-end", "plateau-warmup"])
def test_a_run_with_every_option_stopped_and_resumed_ends_as_a_straight_one(
        demo_data, tmp_path, monkeypatch, recipe, polls_before_the_stop):
    """Stopped in epoch 3 of 4 or at epoch 2's end (as by SIGTERM) and resumed: the same
    weights, average, schedule position and metrics as a straight run, bit for bit."""
    fit(train_args(demo_data, tmp_path / "straight", **recipe), progress=False)
    polls = []
    with monkeypatch.context() as m:
        m.setattr(StopRequest, "requested", property(lambda self: polls.append(1) or
                                                     len(polls) > polls_before_the_stop))
        with pytest.raises(Interrupted):
            fit(train_args(demo_data, tmp_path / "cut", **recipe), progress=False)
    cut = read_file(tmp_path / "cut" / "last.pt")
    mid_epoch = polls_before_the_stop > 2 * (STEPS + 1)
    assert cut["run"]["epoch"] == 2 and (cut["run"]["step"] > 0) == mid_epoch
    fit(train_args(demo_data, tmp_path / "cut", **recipe,
                   resume=str(tmp_path / "cut" / "last.pt")), progress=False)
    for name in ("last.pt", "best.pt"):
        a, b = (read_file(tmp_path / run / name) for run in ("straight", "cut"))
        last = name == "last.pt"  # the training state: the weights in training with EMA
        for weights in ("model", "trained_model") if recipe.get("model_ema") and last \
                else ("model",):
            assert all(torch.equal(a[weights][k], b[weights][k]) for k in a[weights]), name
        assert a.get("scheduler") == b.get("scheduler") and a.get("ema") == b.get("ema")
        assert a["run"]["best_epoch"] == b["run"]["best_epoch"]
        assert a["temperature"] == b["temperature"] and (not last or "scheduler" in a)
    rows = [read_csv(tmp_path / run / "metrics.csv") for run in ("straight", "cut")]
    for column in ("train_loss", "train_acc", "val_loss", "lr"):
        assert [r[column] for r in rows[0]] == [r[column] for r in rows[1]], column


@pytest.mark.parametrize("values, message", [
    ({"lr_warmup_epochs": 70}, "--lr-warmup-epochs 70 leaves none of the 70 epochs"),
    ({"lr_min": 1e-3}, "--lr-min 0.001 must be below --lr 0.0001"),
    ({"mixup_alpha": -1.0}, "--mixup-alpha must be 0 or more, got -1.0"),
    ({"patience": -1}, "--patience must be 0 or more, got -1"),
    ({"lr_scheduler": "step"}, "--lr-scheduler must be one of plateau, cosine, got 'step'"),
    ({"auto_augment": "aa"}, "--auto-augment must be one of none, ta_wide, ra, got 'aa'"),
    ({"lr": 1e38}, r"--lr must be at most 10 \(Adam's step grows with it"),  # a traceback
    ({"random_erase": 1.5}, "--random-erase must be at most 1, got 1.5"),
    ({"model_ema_decay": 1.0}, r"--model-ema-decay must be between 0 and 1 \(exclusive\), got 1.0"),
])
def test_the_recipe_options_are_checked_at_the_flag(values, message):
    with pytest.raises(Coco4Error, match=f"^{message}"):
        TrainConfig(**values)


def test_a_resume_says_when_it_runs_mixed_precision_on_a_run_trained_without(run_copy,
                                                                             demo_data):
    """--amp is a run option: a resume takes this command line's, and says so where the run
    trained with --no-amp (an older coco4 stored it in the config, a newer one apart)."""
    for where in ("config", "run_options"):
        ckpt = torch.load(run_copy / "last.pt", weights_only=True)
        if where == "config":  # as e49943c wrote it: every setting in the config
            ckpt["config"].update(ckpt.pop("run_options"))
        ckpt[where]["amp"] = False
        torch.save(ckpt, run_copy / "last.pt")
        ran = run_script("train", *train_argv(demo_data, run_copy, "--resume",
                                              run_copy / "last.pt", "--epochs", "11"))
        assert ran.status == 0, ran.err[-2000:]
        assert "the run trained with --no-amp, and this resume runs mixed precision" in ran.out
        ckpt = torch.load(run_copy / "last.pt", weights_only=True)
        ckpt["run"]["epoch"] = 10  # train epoch 11 again, from the other place amp is kept
        torch.save(ckpt, run_copy / "last.pt")


def test_a_resume_whose_epochs_end_inside_the_warmup_is_a_command_line_error(
        demo_data, tmp_path):
    fit(train_args(demo_data, tmp_path, epochs=4, lr_warmup_epochs=3), progress=False)
    ran = run_script("train", *train_argv(demo_data, tmp_path, "--resume",
                                          tmp_path / "last.pt", "--epochs", "3"))
    assert ran.status == 2
    assert ran.error.startswith("--epochs 3 is the total, and ") and "warms up for 3" in ran.error


def test_decay_per_update_is_torchvisions_adjustment_worked_by_hand():
    # references/classification/train.py: alpha = (1 - decay) * world * batch * steps / epochs
    assert decay_per_update(0.99998, 1024, 600) == pytest.approx(1 - 2e-5 * 1024 / 600)
    assert decay_per_update(0.998, 2048, 70) == pytest.approx(1 - 0.002 * 2048 / 70)  # 0.9415
    assert decay_per_update(0.9, 2048, 70) == 0.0  # alpha capped at 1: the weights themselves


def test_the_average_is_torchs_averaged_model_with_buffers():
    """ModelEma against torch.optim.swa_utils.AveragedModel(use_buffers=True) with its EMA
    function, update by update: parameters and BatchNorm statistics (floats and counts)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.randn(2, 3, 8, 8))
    ours = ModelEma(net, 0.9)
    theirs = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(4):
        net(torch.randn(6, 3, 8, 8)).square().mean().backward()  # moves the BN statistics too
        optimizer.step()
        optimizer.zero_grad()
        ours.update(net)
        theirs.update_parameters(net)
        for a, b in zip([*ours.module.parameters(), *ours.module.buffers()],
                        [*theirs.module.parameters(), *theirs.module.buffers()]):
            assert torch.equal(a, b)
    assert not torch.equal(ours.module[1].running_mean, net[1].running_mean)  # it averaged
    ours.update(net, restart=True)  # the warmup's rule: averaged, then the count reset ...
    assert ours.updates == 0 and not torch.equal(ours.module[1].running_mean,
                                                 net[1].running_mean)
    ours.update(net)  # ... so that the next update copies the weights themselves
    assert torch.equal(ours.module[1].running_mean, net[1].running_mean) and ours.updates == 1


def test_a_model_ema_run_validates_and_ships_the_average(demo_data, tmp_path, monkeypatch):
    """--model-ema: the warmup's steps copy the weights, later ones average; validation scores
    the average, best.pt holds it as its model (the weights in training beside it), and
    evaluate.py, predict.py and export.py use it."""
    restarts, validated = [], []
    update, validate = ModelEma.update, trainer.validate
    monkeypatch.setattr(ModelEma, "update", lambda self, model, restart=False: (
        restarts.append(restart), update(self, model, restart))[1])
    monkeypatch.setattr(trainer, "validate", lambda model, *a: (
        validated.append({k: v.clone() for k, v in model.net.state_dict().items()}),
        validate(model, *a))[1])
    fit(train_args(demo_data, tmp_path, epochs=3, lr_warmup_epochs=1, model_ema=True,
                   model_ema_decay=0.99), progress=False)
    assert restarts == [True] * STEPS + [False] * 2 * STEPS
    last, best = read_file(tmp_path / "last.pt"), read_file(tmp_path / "best.pt")
    # the last warmup update reset the count: the first after it copied (torchvision's rule)
    assert last["ema"] == {"decay": pytest.approx(1 - 0.01 * 8 / 3), "updates": 2 * STEPS}
    assert all(torch.equal(validated[-1][k], last["model"][k]) for k in last["model"])
    assert any(not torch.equal(last["model"][k], last["trained_model"][k])
               for k in last["model"])
    net = load_model(tmp_path / "best.pt").model.net
    assert all(torch.equal(net.state_dict()[k], best["model"][k]) for k in best["model"])
    ran = run_script("evaluate", *eval_argv(demo_data, tmp_path / "best.pt", tmp_path / "eval",
                                            "--no-calibration"))
    assert ran.status == 0, ran.err[-2000:]
    image_list, probs = direct_predictions(net, demo_data, 32)
    check_against_direct(tmp_path / "eval", image_list, probs, load_model(tmp_path /
                                                                          "best.pt").classes)
    val_images = demo_data / "coco" / "images" / "val2017"
    ran = run_script("predict", val_images, "--checkpoint", tmp_path / "best.pt", "--out",
                     tmp_path / "p.csv", "--device", "cpu", "--workers", "0")
    assert ran.status == 0, ran.err[-2000:]
    ran = run_script("export", "--checkpoint", tmp_path / "best.pt", "--format", "torchscript",
                     "--out", tmp_path / "m.pt")
    assert ran.status == 0 and "parity" in ran.out, ran.err[-2000:]


def test_the_modern_preset_sets_its_settings_and_a_flag_given_wins():
    parser = train.get_args_parser()
    modern = TrainConfig(**RECIPES.sets["modern"])  # every preset value passes the checks
    args = parser.parse_args(["--recipe", "modern"])
    assert options.from_args(TrainConfig, args).recipe == modern.recipe
    for argv in (["--recipe", "modern", "--no-model-ema"], ["--no-model-ema", "--recipe=modern"]):
        cfg = options.from_args(TrainConfig, parser.parse_args(argv))
        assert not cfg.model_ema and cfg.mixup_alpha == 0.2 and cfg.lr_scheduler == "cosine"
    assert options.from_args(TrainConfig, parser.parse_args([])) == TrainConfig()  # no leftovers


@pytest.mark.parametrize("damage, problem", [
    ({}, "no trained_model beside the averaged weights"),
    ({"trained_model": "model", "ema": {"decay": 1.5, "updates": 3}}, "ema is {'decay': 1.5"),
    ({"trained_model": "model", "ema": {"decay": 0.9, "updates": -1}}, "ema is {'decay': 0.9"),
])
def test_a_model_ema_checkpoint_without_its_average_state_is_refused(run_copy, demo_data,
                                                                     damage, problem):
    ckpt = torch.load(run_copy / "last.pt", weights_only=True)
    ckpt["config"]["model_ema"] = True
    ckpt.update({k: ckpt[v] if v == "model" else v for k, v in damage.items()})
    torch.save(ckpt, run_copy / "last.pt")
    ran = run_script("train", *train_argv(demo_data, run_copy, "--resume", run_copy / "last.pt",
                                          "--epochs", "20"))
    assert ran.status == 2 and "holds a training state this coco4 cannot resume (" + problem \
        in ran.error, ran.error


def test_recipe_without_its_value_is_the_scripts_own_usage_error():
    ran = run_script("train", "--recipe")
    assert ran.status == 2 and "[--arch {" in ran.err  # the whole parser's usage, not a probe's
    assert "argument --recipe: expected one argument" in ran.err


def test_a_cosine_resumed_past_its_planned_epochs_says_where_the_lr_stays(demo_data, tmp_path):
    """The adversarial pass (#35): the extra epochs trained at --lr-min 0 without a word."""
    fit(train_args(demo_data, tmp_path, epochs=2, lr_scheduler="cosine"), progress=False)
    ran = run_script("train", *train_argv(demo_data, tmp_path, "--resume", tmp_path / "last.pt",
                                          "--epochs", "3"))
    assert ran.status == 0, ran.err[-1500:]
    assert "--epochs 3 goes past the end this run's cosine was planned for (the --epochs it " \
           "began with): the epochs after it train at --lr-min 0" in ran.out
