"""A small mutation pass over the modules that decide results: does some test fail when the
code is broken in a way that silently gives wrong numbers?

    python -m tools.mutants                 # every mutant
    python -m tools.mutants --list          # their names, files and tests
    python -m tools.mutants --only split-floor,ece-abs-outside
    python -m tools.mutants --group issue16 # the five a first pass (#16) let through
    python -m tools.mutants --group issue26 # the blind spots of #26 and its own pass
    python -m tools.mutants --from-head     # the last commit, not the working tree

Each mutant is one realistic breakage: a snippet of a file replaced by a wrong one, and the
narrowest tests that should notice. The repository (the working tree's tracked and untracked,
not ignored, files) is copied to a scratch folder once, never touched in place: each mutant is
applied there alone, its tests run with pytest, and the file restored. Caught: a test failed.
Survived: every test passed, so no test pins that behaviour; write the test that would have
failed (never drop the mutant). A run first checks that the chosen tests pass unmutated.

Adding a mutant: one ``Mutant`` in ``MUTANTS`` below; its snippet must occur exactly once.
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from coco4 import cli
from coco4.errors import Coco4Error

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    original: str  # occurs exactly once in the file
    mutated: str
    tests: tuple[str, ...]  # pytest node ids (file::test), the narrowest that should fail


FILTER, SPLIT = "coco4/data/coco_filter.py", "coco4/data/prepare.py"
METRICS, TRAINER = "coco4/metrics.py", "coco4/trainer.py"
TRAINING, INFERENCE = "coco4/training.py", "coco4/inference.py"
PREFLIGHT = "coco4/preflight.py"
CHECKPOINT, CALIBRATION = "coco4/checkpoint.py", "coco4/calibration.py"
LOADERS = "coco4/data/loaders.py"
OTHER_CLASS, OPEN_SET = "coco4/data/other_class.py", "coco4/open_set.py"

P = "tests/test_protections.py::test_"
FILTER_TESTS = ("tests/test_coco_filter.py::test_rule_per_case",
                "tests/test_coco_filter.py::test_labels_follow_classes_order")
SPLIT_TESTS = (P + "the_validation_split_is_disjoint_complete_stratified_and_seeded",)
METRIC_TESTS = ("tests/test_metrics.py::test_summary_equals_scikit_learn_and_the_ece_by_hand",
                "tests/test_metrics.py::test_worked_example",
                "tests/test_metrics.py::test_a_class_without_images_and_no_images_at_all")
STEP_TESTS = (P + "each_step_of_an_epoch_draws_its_own_dropout_and_a_resumed_step_the_same",
              P + "each_step_updates_by_its_own_batchs_gradient_alone",
              "tests/test_train.py::test_accumulated_micro_batches_give_the_full_batch_update")
BEST_TESTS = (P + "the_best_checkpoint_is_the_first_epoch_with_the_best_chosen_score",)
BALANCE_TESTS = ("tests/test_balance.py::test_the_balance_flag_reaches_the_sampler_and_the_loss",)
RESUME_TESTS = (P + "a_resumed_run_continues_the_optimizer_and_the_lr_schedule",)
R = "tests/test_recipe.py::test_"
A = "tests/test_image_augment.py::test_"
W = "tests/test_checkpoint_writes.py::test_"
AUGMENT, EMA = "coco4/image_augment.py", "coco4/ema.py"
MIXING_TESTS = (R + "mixup_blends_each_image_with_its_neighbour_and_the_targets_alike",
                R + "cutmix_pastes_one_box_of_the_neighbour_and_the_share_is_what_each_keeps")
OC = "tests/test_other_class.py::test_"
OTHER_TESTS = (OC + "the_other_images_hold_none_of_the_classes_and_no_held_out_kind",
               OC + "the_sample_is_spread_over_kinds_worked_by_hand",
               OC + "a_held_out_kind_is_in_no_other_image", OC + "the_lists_of_negatives")
S = "tests/test_open_set.py::test_"
OPEN_SET_TESTS = (S + "auroc_and_fpr_at_95_tpr_equal_scikit_learns_ties_included",
                  S + "the_scores_and_what_is_rejected",
                  S + "evaluate_reports_how_a_model_with_an_other_class_rejects_negatives")
CALIBRATION_TESTS = ("tests/test_calibration.py::test_the_fit_finds_the_temperature_an_"
                     "overconfident_model_was_given",
                     "tests/test_calibration.py::test_a_checkpoint_gives_back_its_temperature")

MUTANTS = [
    # the filter rule: an image is class C's when its category set, crowds included, is {C}
    Mutant("filter-ignores-crowds", FILTER, "getAnnIds(imgIds=[img_id], iscrowd=None)",
           "getAnnIds(imgIds=[img_id], iscrowd=False)", FILTER_TESTS),
    Mutant("filter-any-annotation", FILTER, "return cats == {cat_id}", "return cat_id in cats",
           FILTER_TESTS),
    Mutant("filter-labels-by-category-id", FILTER, "for label, cat_id in enumerate(ids):",
           "for label, cat_id in enumerate(sorted(ids)):", FILTER_TESTS),
    Mutant("dominant-boundary-exclusive", FILTER, 'own / total >= rule["min_area_fraction"]',
           'own / total > rule["min_area_fraction"]',
           ("tests/test_coco_filter.py::test_dominant_boundary_is_inclusive",)),
    Mutant("dominant-allows-two-targets", FILTER, "if cats & set(target_ids) != {cat_id}:",
           "if cat_id not in cats:", ("tests/test_coco_filter.py::test_dominant_rule_per_case",)),
    # the validation split
    Mutant("split-floor", SPLIT, "int(round(len(members) * val_fraction))",
           "int(len(members) * val_fraction)", SPLIT_TESTS),
    Mutant("split-overlaps-training", SPLIT, "train.extend(members[n_val:])",
           "train.extend(members)", SPLIT_TESTS),
    Mutant("split-unshuffled", SPLIT, "members = rng.permutation(members)\n", "\n",
           SPLIT_TESTS),
    # the metrics
    Mutant("confusion-transposed", METRICS, "labels * c + preds", "preds * c + labels",
           METRIC_TESTS),
    Mutant("nll-batch-means", METRICS, "log_probs.gather(1, labels[:, None]).sum()",
           "log_probs.gather(1, labels[:, None]).mean()", METRIC_TESTS),
    Mutant("ece-abs-outside", METRICS, "np.abs(confidence - correct).sum()",
           "np.abs((confidence - correct).sum())", METRIC_TESTS),
    Mutant("balanced-acc-counts-absent-classes", METRICS,
           '"balanced_accuracy": float(recall[present].mean())',
           '"balanced_accuracy": float(recall.mean())', METRIC_TESTS),
    Mutant("precision-recall-swapped", METRICS, "    return true, pred\n",
           "    return pred, true\n", METRIC_TESTS),
    # the training step, its figures, and validation under torchrun
    Mutant("loss-per-micro-batch", TRAINING, "parts.scaler.scale(loss / total).backward()",
           "parts.scaler.scale(loss / len(yb)).backward()", STEP_TESTS),
    Mutant("gradients-never-zeroed", TRAINING,
           "    parts.scaler.update()\n    parts.optimizer.zero_grad(set_to_none=True)\n",
           "    parts.scaler.update()\n", STEP_TESTS),
    Mutant("dropout-seed-without-step", TRAINING, "seed_everything(*seed, state.epoch, step)",
           "seed_everything(*seed, state.epoch)", STEP_TESTS),
    Mutant("train-count-per-step", TRAINING, "state.count += len(y)", "state.count += 1",
           STEP_TESTS),
    Mutant("validation-not-sharded", LOADERS, "return torch.arange(n)[plan.rank::plan.world]",
           "return torch.arange(n)",
           ("tests/test_batches.py::test_torchrun_ranks_split_an_epoch_without_overlap_in_equal_"
            "steps",)),
    # checkpoint selection and the LR schedule
    Mutant("best-on-ties-moves-later", TRAINER, "is_best = score > run.best_metric",
           "is_best = score >= run.best_metric", BEST_TESTS),
    Mutant("select-by-ignored", TRAINER, "lr), val[self.cfg.select_by]",
           'lr), val["accuracy"]', BEST_TESTS),
    Mutant("plateau-on-training-loss", TRAINER, 'parts.schedule.after_epoch(val["nll"])',
           "parts.schedule.after_epoch(trained[0] / trained[2])",
           (P + "the_lr_drops_when_the_validation_loss_stops_improving",)),
    # resume
    Mutant("resume-without-optimizer-state", TRAINING,
           '        optimizer.load_state_dict(ckpt["optimizer"])\n', "", RESUME_TESTS),
    Mutant("resume-mid-epoch-loses-sums", TRAINER, "run.epoch_sums if stopped_here else None",
           "None", (P + "a_run_stopped_mid_epoch_reports_the_whole_epochs_figures",)),
    Mutant("format-1-best-forgotten", CHECKPOINT,
           'run["best_metric"] = run.pop("best_acc", -1.0)',
           'run.pop("best_acc", None)\n            run["best_metric"] = -1.0',
           ("tests/test_checkpoint.py::test_a_format_1_run_keeps_its_best_score",)),
    # calibration
    Mutant("temperature-multiplies", CALIBRATION, "logits / log_t.exp()", "logits * log_t.exp()",
           CALIBRATION_TESTS),
    Mutant("temperature-range-unchecked", CALIBRATION,
           "return t if T_RANGE[0] < t < T_RANGE[1] else 1.0", "return t", CALIBRATION_TESTS),
    Mutant("temperature-not-loaded", CHECKPOINT,
           "str(path), ckpt, stored_temperature(ckpt, str(path)))", "str(path), ckpt, 1.0)",
           CALIBRATION_TESTS),
    # found by a review after this list was first run: each survived every test then
    Mutant("temperature-not-applied", "coco4/evaluation.py",
           "calibrated = averaged_log_probs(views, predictor.temperature)",
           "calibrated = averaged_log_probs(views, 1.0)",
           ("tests/test_calibration.py::test_evaluate_reports_both_and_draws_the_reliability_"
            "diagram",)),
    Mutant("balance-sampler-ignored", "coco4/config.py", 'balanced=self.balance == "sampler")',
           "balanced=False)", BALANCE_TESTS),
    Mutant("per-step-schedule-never-stepped", TRAINING,
           "    if parts.schedule is not None:\n        parts.schedule.after_step()\n", "",
           ("tests/test_train.py::test_a_per_step_schedule_steps_after_each_optimizer_step_and_"
            "resumes_there",)),
    Mutant("lr-column-at-the-epochs-end", TRAINING,
           '                state.lr = parts.optimizer.param_groups[0]["lr"]',
           "                pass",
           ("tests/test_train.py::test_a_per_step_schedule_steps_after_each_optimizer_step_and_"
            "resumes_there",)),
    Mutant("mixup-targets-not-mixed", "coco4/mixing.py",
           "return images, onehot * share + onehot.roll(1, 0) * (1 - share)",
           "return images, onehot", MIXING_TESTS),
    Mutant("cutmix-share-unclipped", "coco4/mixing.py",
           "return images, 1 - (bottom - top) * (right - left) / (height * width)",
           "return images, share", MIXING_TESTS),
    Mutant("patience-off-by-one", "coco4/resume.py", "self.epoch - self.best_epoch >= patience",
           "self.epoch - self.best_epoch > patience",
           (R + "early_stopping_stops_a_run_that_does_not_improve_and_says_so",)),
    Mutant("cosine-without-its-floor", TRAINING,
           "return floor + (1 - floor) * (1 + math.cos(math.pi * done)) / 2",
           "return (1 + math.cos(math.pi * done)) / 2",
           (R + "warmup_then_cosine_worked_by_hand",
            R + "the_scheduler_steps_the_optimizers_lr_as_the_formula_says")),
    Mutant("warmup-state-not-restored", TRAINING,
           "            self.warmup.load_state_dict(warmup)\n", "            pass\n",
           (R + "a_run_with_every_option_stopped_and_resumed_ends_as_a_straight_one",)),
    Mutant("cosine-horizon-from-the-command-line", TRAINING,
           "optimizer, WarmupCosine(warmup_steps, total, floor)), per_step=True,",
           "optimizer, lambda k: warmup_then_cosine(k, warmup_steps, total, floor)), "
           "per_step=True,",
           (R + "a_cosine_resumed_with_more_epochs_keeps_the_curve_it_started_on",)),
    Mutant("label-smoothing-ignored", TRAINING, "                               "
           "label_smoothing=recipe.label_smoothing)", "                               )",
           ("tests/test_train.py::test_label_smoothing_is_the_smoothed_cross_entropy_worked_"
            "by_hand", "tests/test_train.py::test_label_smoothing_trains_is_stored_and_resumed")),
    # the modern recipe's per-image augmentation, model EMA and preset (#31)
    Mutant("augment-one-operation-per-batch", AUGMENT,
           "ops = torch.randint(len(table), (n,), generator=generator)",
           "ops = torch.randint(len(table), (1,), generator=generator).expand(n)",
           (A + "each_image_draws_its_own_operations_from_the_step_generator",)),
    Mutant("augment-never-negative", AUGMENT,
           "return ops, torch.where(signed[ops] & negative, -magnitudes, magnitudes)",
           "return ops, magnitudes",
           (A + "trivial_augment_draws_operations_bins_and_signs_uniformly",)),
    Mutant("augment-rotates-the-other-way", AUGMENT,
           "inverse_affine((0.0, 0.0), -a, (0.0, 0.0), (0.0, 0.0))",
           "inverse_affine((0.0, 0.0), a, (0.0, 0.0), (0.0, 0.0))",
           (A + "each_operation_gives_torchvisions_pixels_at_every_magnitude",)),
    Mutant("erase-to-black", TRAINING, "tuple(round(255 * m) for m in mean)", "(0, 0, 0)",
           (A + "the_recipe_erases_to_the_normalisation_mean_before_mixing",)),
    Mutant("ema-decay-unadjusted", EMA,
           "return 1.0 - min(1.0, (1.0 - decay) * batch_size / epochs)", "return decay",
           (R + "decay_per_update_is_torchvisions_adjustment_worked_by_hand",
            R + "a_model_ema_run_validates_and_ships_the_average")),
    Mutant("ema-buffers-not-averaged", EMA, "return [*model.parameters(), *model.buffers()]",
           "return [*model.parameters()]",
           (R + "the_average_is_torchs_averaged_model_with_buffers",)),
    Mutant("ema-averages-the-warmup", TRAINING,
           "parts.ema.update(unwrap(model), restart=warming_up)",
           "parts.ema.update(unwrap(model), restart=False)",
           (R + "a_model_ema_run_validates_and_ships_the_average",)),
    Mutant("ema-validation-scores-the-trained-weights", TRAINER,
           "model = self.parts.ema.module if self.parts.ema else unwrap(self.parts.model)",
           "model = unwrap(self.parts.model)",
           (R + "a_model_ema_run_validates_and_ships_the_average",)),
    Mutant("ema-count-not-resumed", TRAINING, '    ema.updates = stored["updates"]\n', "",
           (R + "a_run_with_every_option_stopped_and_resumed_ends_as_a_straight_one",)),
    Mutant("preset-defaults-left-behind", "coco4/options.py",
           "self.set_defaults(**{**self._plain, **self.presets.sets.get(chosen, {})})",
           "self.set_defaults(**self.presets.sets.get(chosen, {}))",
           (R + "the_modern_preset_sets_its_settings_and_a_flag_given_wins",)),
    # a run's writes (#34)
    Mutant("best-pt-keeps-the-training-state", TRAINER,
           '{**self._described_model(), "kind": "best",',
           '{**self._described_model(), **_training_state(self.parts), "kind": "best",',
           (W + "best_pt_holds_the_model_and_its_description_not_the_training_state",)),
    Mutant("last-pt-every-epoch", TRAINER,
           "return time.monotonic() - self._saved_at >= self.cfg.save_every", "return True",
           (W + "a_short_run_writes_each_file_once_at_its_end",
            W + "last_pt_follows_the_clock")),
    Mutant("a-stop-between-saves-not-saved", TRAINER,
           "if stopping or run.stopped_early or run.epoch == cfg.epochs or self._save_due():",
           "if run.stopped_early or run.epoch == cfg.epochs or self._save_due():",
           (W + "a_run_stopped_between_saves_writes_both_and_resumes_as_a_straight_one",)),
    Mutant("best-pt-left-waiting", TRAINER,
           'files = [] if self._best is None else [(out / "best.pt", self._best)]',
           "files = []", (W + "a_short_run_writes_each_file_once_at_its_end",)),
    Mutant("balance-loss-ignored", TRAINING, 'if recipe.balance == "loss" else None)',
           "if False else None)", BALANCE_TESTS),
    # the other class and the open-set figures (#23)
    Mutant("other-takes-images-of-the-classes", OTHER_CLASS,
           'if not any(a["category_id"] in targets for a in anns)}',
           'if any(a["category_id"] in targets for a in anns)}', OTHER_TESTS),
    Mutant("other-holdout-ignored", OTHER_CLASS,
           "        if not any(a[\"category_id\"] in held for a in anns):\n"
           "            groups.setdefault(",
           "        if True:\n            groups.setdefault(", OTHER_TESTS),
    Mutant("other-val-share-ignored", OTHER_CLASS,
           "n = round(self.spec.count * kept / max(self.train_kept, 1))",
           "n = self.spec.count", OTHER_TESTS),
    Mutant("other-not-spread", OTHER_CLASS, "share[group] = min(len(groups[group]), left // "
           "(len(todo) - k))", "share[group] = min(len(groups[group]), left)", OTHER_TESTS),
    Mutant("open-set-score-direction", OPEN_SET,
           'found["not_other"] = 1 - probs[:, classes.index(OTHER)]',
           'found["not_other"] = probs[:, classes.index(OTHER)]', OPEN_SET_TESTS),
    Mutant("open-set-negatives-as-known", OPEN_SET,
           "score_figures(known_scores[name], unknown_scores[name])",
           "score_figures(unknown_scores[name], known_scores[name])", OPEN_SET_TESTS),
    Mutant("open-set-ties-counted-whole", OPEN_SET, "ranks[order[s:e]] = (s + 1 + e) / 2",
           "ranks[order[s:e]] = e", OPEN_SET_TESTS),
]

# the five breakages the first pass (#16) found unprotected, kept as a regression group
ISSUE16 = [
    Mutant("resume-without-scheduler-state", TRAINING,
           '        schedule.load_state_dict(ckpt["scheduler"])\n', "",
           ("tests/test_train.py::test_resume_gives_the_same_weights_and_same_seed_the_same_run",
            *RESUME_TESTS)),
    Mutant("augment-seed-without-step", LOADERS,
           'generator(plan.seed, "augment", epoch, step, plan.rank)',
           'generator(plan.seed, "augment", epoch, plan.rank)',
           (P + "two_steps_of_one_epoch_get_different_crops",)),
    Mutant("normalisation-bgr-std-1", "coco4/model.py",
           "IMAGENET_MEAN = (0.485, 0.456, 0.406)\nIMAGENET_STD = (0.229, 0.224, 0.225)",
           "IMAGENET_MEAN = (0.406, 0.456, 0.485)\nIMAGENET_STD = (1.0, 1.0, 1.0)",
           ("tests/test_model.py::test_normalisation_is_what_the_torchvision_weights_expect",
            "tests/test_model.py::test_the_model_normalises_pixels_itself")),
    Mutant("evaluation-in-train-mode", INFERENCE,
           "    model.eval()\n    all_logits, all_labels = [], []\n",
           "    all_logits, all_labels = [], []\n",
           (P + "evaluation_runs_in_eval_mode_whatever_mode_the_model_was_left_in",)),
    Mutant("validation-sums-not-reduced", TRAINER, "val = metrics.all_reduce(env).summary(",
           "val = metrics.summary(",
           ("tests/test_distributed.py::test_torchrun_validation_equals_a_single_process_"
            "evaluation",)),
]

# each fix of the third reliability round (#25) undone, one at a time: its test must fail
H = "tests/test_hostile.py::test_"
ISSUE25 = [
    Mutant("output-over-input-allowed", "coco4/fileio.py",
           "        found = seen.get(_identity(path))\n", "        found = None\n",
           (H + "1_predict_never_writes_over_an_input_image",
            H + "2_predict_never_writes_over_the_checkpoint",
            H + "3_export_never_writes_over_the_checkpoint")),
    Mutant("overwrite-deletes-during-the-checks", PREFLIGHT,
           "                         \"first, or choose another --output-dir\")\n"
           "    return earlier",
           "                         \"first, or choose another --output-dir\")\n"
           "    from .run_folder import remove\n    remove(earlier)\n    return []",
           (H + "4_overwrite_deletes_nothing_when_the_new_run_fails_its_checks",)),
    Mutant("resume-into-another-runs-folder", PREFLIGHT,
           "    earlier = [p for p in earlier_run(folder, overwrite=True) if not same_file(p, "
           "resume)]", "    earlier = []",
           (H + "4b_a_resumed_run_never_mixes_with_another_run",
            H + "4c_a_run_resumed_from_another_file_in_its_folder_is_checked_too")),
    Mutant("checkpoint-fields-unchecked", "coco4/checkpoint_check.py",
           "    problem = _fields_problem(ckpt)\n", "    problem = None\n",
           (H + "5_and_10_to_12_and_20_a_checkpoint_field_that_cannot_be_used_is_one_line",
            H + "5_a_checkpoint_asking_for_a_huge_image_is_refused_before_any_allocation")),
    Mutant("non-finite-weights-loaded", "coco4/checkpoint_check.py",
           "if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):",
           "if False:", (H + "19_nan_weights_are_refused_not_predicted",)),
    Mutant("repeated-class-names-read", "coco4/data/lists.py", "    if repeated:\n",
           "    if False:\n", (H + "20_a_class_file_naming_a_class_twice_is_refused",)),
    Mutant("predict-writes-the-final-name-directly", "coco4/file_predictions.py",
           "out, partial, skipped = self.out, partial_path(self.out), []",
           "out, partial, skipped = self.out, self.out, []",
           (H + "6_predict_on_a_full_disk_is_one_line_and_nothing_under_the_final_name",
            H + "8_a_signal_stops_predict_with_one_line_and_its_rows_marked_partial")),
    Mutant("predict-ignores-signals", "coco4/file_predictions.py",
           "if stop.requested and done < len(self.paths):", "if False:",
           (H + "8_a_signal_stops_predict_with_one_line_and_its_rows_marked_partial",)),
    Mutant("ctrl-c-is-a-traceback", "coco4/cli.py", "except (KeyboardInterrupt, Terminated) as e:",
           "except Terminated as e:",
           (H + "9_ctrl_c_while_the_cache_is_built_is_one_line_and_leaves_no_partial_cache",)),
    Mutant("deep-json-is-a-traceback", "coco4/data/coco_filter.py", "except RecursionError:",
           "except ZeroDivisionError:",
           (H + "13_a_coco_json_nested_without_end_is_one_line",)),
    Mutant("surrogate-names-pass", "coco4/data/lists.py", '        name.encode("utf-8")\n',
           '        name.encode("utf-8", "surrogatepass")\n',
           (H + "14_and_16_a_coco_file_name_outside_the_image_folder_is_one_line",)),
    Mutant("names-climb-out", "coco4/data/lists.py", '    if ".." in parts:', "    if False:",
           (H + "14_and_16_a_coco_file_name_outside_the_image_folder_is_one_line",
            H + "17_and_18_list_lines_that_would_count_an_image_twice_or_read_a_label_wrongly")),
    Mutant("names-not-normalised", "coco4/data/lists.py",
           'if name in (".", "") or posixpath.normpath(name) != name:', 'if name == "":',
           (H + "17_and_18_list_lines_that_would_count_an_image_twice_or_read_a_label_wrongly",)),
    Mutant("undecodable-names-written", "coco4/file_predictions.py",
           '            str(path).encode("utf-8")\n',
           '            str(path).encode("utf-8", "surrogateescape")\n',
           (H + "15_an_image_whose_name_is_not_utf8_is_skipped_and_the_csv_stays_whole",)),
    Mutant("labels-read-by-isdigit", "coco4/data/lists.py",
           "    if not LABEL.fullmatch(label_text):", "    if not label_text.isdigit():",
           (H + "17_and_18_list_lines_that_would_count_an_image_twice_or_read_a_label_wrongly",)),
    Mutant("resume-offered-without-last-pt", "coco4/run_folder.py",
           '        if (folder / "last.pt").exists():\n', "        if True:\n",
           (H + "21_a_run_that_stopped_before_its_first_checkpoint_is_not_offered_a_resume",)),
    Mutant("a-folder-is-not-found", CHECKPOINT, "    if not path.exists():\n",
           "    if not path.is_file():\n",
           (H + "22_paths_that_exist_but_are_no_files_are_named_as_such",)),
    Mutant("formula-cells-written", "coco4/fileio.py",
           "return \"'\" + text if text.startswith(SPREADSHEET_FORMULA) else text",
           "return text", (H + "23_a_cell_a_spreadsheet_would_run_as_a_formula_is_quoted",)),
    # the second, adversarial pass
    Mutant("predict-partial-shared-with-a-run-beside", "coco4/file_predictions.py",
           "        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n", "        pass\n",
           (H + "6b_a_run_beside_writing_the_same_partial_keeps_its_rows",)),
    Mutant("negatives-names-unchecked", "coco4/data/lists.py",
           '        _check_name(name, f"{path}:{lineno}")\n', "",
           (S + "a_negatives_name_outside_the_image_folder_is_one_line_before_any_work",)),
    Mutant("negatives-may-be-test-images", "coco4/evaluation.py", "        if shared:\n",
           "        if False:\n",
           (S + "negatives_that_would_count_twice_or_are_test_images_are_refused",)),
    Mutant("negatives-keyed-by-file-name", "coco4/evaluation.py",
           "key = Path(path).name if file_names.count(Path(path).name) == 1 else str(path)",
           "key = Path(path).name",
           (S + "lists_of_one_name_are_both_reported_and_an_empty_one_is_a_warning",)),
    Mutant("eval-folder-replaced-unasked", "coco4/evaluation.py",
           "    if opts.overwrite:\n        return\n", "    if True:\n        return\n",
           (S + "an_eval_folder_holds_one_checkpoints_results",
            H + "an_eval_folder_is_locked_and_never_takes_files_it_did_not_write")),
    Mutant("eval-folder-unlocked", "coco4/evaluation.py",
           "    with run_lock(out_dir, user=(\"evaluation\", \"--out-dir\")):\n",
           "    with memoryview(b\"\"):\n",  # a context manager that holds nothing
           (H + "an_eval_folder_is_locked_and_never_takes_files_it_did_not_write",)),
    Mutant("export-verify-ignores-classes", "coco4/exporting.py",
           "    check_made_from(meta, predictor, out)\n", "",
           ("tests/test_export.py::test_verifying_an_export_of_other_classes_or_temperature_"
            "says_so",)),
    Mutant("annotation-json-overwritten", "coco4/annotation_lists.py",
           "[(\"--train-json\", train_json), (\"--val-json\", val_json)]", "[]",
           (H + "annotation_prepare_never_writes_over_its_coco_json",)),
    Mutant("tex-in-picture-titles", "coco4/plots.py", "        text.set_parse_math(False)\n",
           "        pass\n", (H + "a_dollar_in_a_file_name_is_text_in_the_pictures_not_tex",)),
]

# the three blind spots of #26, and a pass of its own over the cache, the crops, export, the run
# lock, Grad-CAM, errors.png and predict's streaming: each a one-spot bug giving wrong results
EXPORT, CACHE, CROPS = "coco4/exporting.py", "coco4/data/cache.py", "coco4/data/transforms.py"
FP, LOCK, GRADCAM = "tests/test_fast_path.py::test_", "coco4/run_folder.py", "coco4/gradcam.py"
EX, CROP_TESTS = "tests/test_export.py::test_", (
    "tests/test_data.py::test_batched_and_per_image_crops_agree",
    "tests/test_data.py::test_crop_boxes_distribution_matches_torchvision")
ISSUE26 = [
    Mutant("cache-key-ignores-the-order", CACHE, "    for p in paths:\n        try:\n",
           "    for p in sorted(paths):\n        try:\n",
           (FP + "each_position_of_a_reordered_or_edited_list_gets_its_own_image",)),
    Mutant("evaluation-rows-shift-past-an-unreadable-image", "coco4/evaluation.py",
           "[image_list.files[i] for i in keep]", "list(image_list.files[:len(keep)])",
           ("tests/test_evaluate.py::test_an_unreadable_image_in_the_middle_leaves_every_row_"
            "with_its_own_file",)),
    Mutant("export-drops-the-temperature", EXPORT,
           "return (self.model(images) / self.temperature).softmax(1)",
           "return self.model(images).softmax(1)",
           (EX + "an_exported_model_gives_predict_pys_calibrated_probabilities",)),
    Mutant("checkpoint-snapshot-shares-storage", CHECKPOINT,
           'value.detach().to("cpu", copy=True)', 'value.detach().to("cpu")',
           ("tests/test_checkpoint.py::test_a_checkpoint_written_behind_training_holds_its_own_"
            "epochs_weights",)),
    Mutant("cache-key-ignores-the-content", CACHE,
           "                    h.update(f.read(EDGE))\n"
           "                    f.seek(max(0, st.st_size - EDGE))\n"
           "                    h.update(f.read(EDGE))\n", "                    pass\n",
           (FP + "an_image_replaced_by_one_of_the_same_size_and_time_rebuilds_the_cache",)),
    Mutant("cache-of-the-wrong-size-used", CACHE, "elif path.stat().st_size != expected:",
           "elif False:", (FP + "a_damaged_cache_is_built_again_with_a_warning",)),
    Mutant("precrop-truncated", CROPS, "int(round(image_size * 256 / 224))",
           "int(image_size * 256 / 224)", ("tests/test_data.py::test_precrop_size",)),
    Mutant("crop-area-scale-as-side", CROPS, "RRC_SCALE = (0.08, 1.0)",
           "RRC_SCALE = (0.08 ** 0.5, 1.0)", CROP_TESTS),
    Mutant("crop-flipped-upside-down", CROPS, "out[i] = resized.flip(1) if flip else resized",
           "out[i] = resized.flip(0) if flip else resized", CROP_TESTS),
    Mutant("crop-box-x-and-y-swapped", CROPS, "float(), left[s:e], top[s:e],",
           "float(), top[s:e], left[s:e],", CROP_TESTS),
    Mutant("export-says-the-crop-size", EXPORT, '"input_size": str(side)',
           '"input_size": str(predictor.image_size)',
           ("tests/test_docs.py::test_the_onnx_snippet_needs_no_torch_and_agrees_with_predict",
            EX + "torchscript_export_passes_its_parity_check_and_carries_"
            "the_metadata")),
    Mutant("export-for-one-batch-size", EXPORT, 'dynamic_shapes={"images": {0: batch}}',
           "dynamic_shapes=None",
           (EX + "onnx_probabilities_match_predict_on_the_demo_val_images",)),
    Mutant("run-lock-shared", LOCK, "fcntl.LOCK_EX | fcntl.LOCK_NB",
           "fcntl.LOCK_SH | fcntl.LOCK_NB",
           ("tests/test_reliability.py::test_a_second_run_in_the_same_folder_is_refused_naming_"
            "the_first",)),
    Mutant("run-lock-left-naming-a-finished-run", LOCK,
           "            os.ftruncate(fd, 0)  # released cleanly",
           "            pass  # released cleanly",
           ("tests/test_reliability.py::test_a_second_run_in_the_same_folder_is_refused_naming_"
            "the_first",)),
    Mutant("gradcam-maps-the-true-class", GRADCAM, "preds[picks].tolist()",
           "[predictions.labels[i] for i in picks]",
           ("tests/test_gradcam.py::test_each_map_is_for_the_predicted_class",)),
    Mutant("gradcam-least-sure-right-ones-first", GRADCAM,
           "right_first = by_loss.flip(0)[right[by_loss.flip(0)]].tolist()",
           "right_first = by_loss[right[by_loss]].tolist()",
           ("tests/test_gradcam.py::test_picks_the_worst_mistakes_then_the_surest_right_ones",)),
    Mutant("errors-png-mildest-mistakes-first", "coco4/plots.py",
           "return wrong[loss.argsort(descending=True, stable=True)][:num]",
           "return wrong[loss.argsort(stable=True)][:num]",
           ("tests/test_gradcam.py::test_errors_png_shows_the_surest_mistakes_first_and_counts_"
            "them_all",)),
    Mutant("predict-min-prob-excludes-its-boundary", "coco4/file_predictions.py",
           "if best >= self.min_prob else", "if best > self.min_prob else",
           ("tests/test_predict.py::test_top_k_min_prob_and_json_lines",
            "tests/test_predict.py::test_a_top_probability_equal_to_min_prob_keeps_its_class")),
    Mutant("predict-rows-shift-past-an-unreadable-image", "coco4/file_predictions.py",
           "return [i for i, _ in good], x,", "return [i for i, _, _ in items][:len(good)], x,",
           ("tests/test_predict.py::test_a_folder_with_a_truncated_jpeg_and_a_text_file_named_jpg",)),
]

GROUPS = {"pass": MUTANTS, "issue16": ISSUE16, "issue25": ISSUE25,
          "issue26": ISSUE26}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run the hand-made mutation pass.")
    p.add_argument("--group", choices=tuple(GROUPS), default="pass")
    p.add_argument("--only", default=None, help="comma-separated mutant names")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--from-head", action="store_true",
                   help="copy the last commit (git archive HEAD), not the working tree")
    p.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--timeout", type=int, default=900, help="seconds per mutant's tests")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip checking that the tests pass unmutated")
    return p


def chosen(args: argparse.Namespace) -> list[Mutant]:
    mutants = GROUPS[args.group]
    if not args.only:
        return mutants
    names = args.only.split(",")
    unknown = sorted(set(names) - {m.name for m in mutants})
    if unknown:
        raise Coco4Error(f"--only names unknown mutants {unknown}; --list shows them")
    return [m for m in mutants if m.name in names]


def copy_repo(dest: Path, from_head: bool) -> None:
    """The repository's files, without .git, the virtual environment or ignored outputs."""
    dest.mkdir(parents=True)
    if from_head:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def run_tests(work: Path, tests: tuple[str, ...], timeout: int) -> tuple[str, float]:
    """'passed', 'failed' or 'timeout', and the seconds pytest took."""
    # -m "": a mutant's tests may be in the slow tier, which the default options leave out
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "",
           f"--basetemp={work / '.pytest-tmp'}", *tests]
    tic = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - tic
    if done.returncode < 0:  # killed by a signal (the mutant took all the memory): caught
        return "killed", time.monotonic() - tic
    if done.returncode not in (0, 1):  # 2-5: pytest itself failed (collection, usage)
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise Coco4Error(f"pytest {' '.join(tests)} could not run (exit "
                             f"{done.returncode}): {' | '.join(tail)}")
    return ("passed" if done.returncode == 0 else "failed"), time.monotonic() - tic


def apply(work: Path, mutant: Mutant) -> str:
    """Write the mutated file; returns the original text, to restore."""
    path = work / mutant.path
    text = path.read_text()
    if text.count(mutant.original) != 1:
        raise Coco4Error(f"mutant {mutant.name}: its snippet occurs "
                             f"{text.count(mutant.original)} times in {mutant.path}, not once; "
                             "the code changed: update the mutant")
    path.write_text(text.replace(mutant.original, mutant.mutated))
    return text


def main(args: argparse.Namespace) -> dict:
    mutants = chosen(args)
    if args.list:
        for m in mutants:
            print(f"{m.name:38} {m.path:24} {' '.join(m.tests)}")
        return {}
    scratch = None if args.work_dir else tempfile.TemporaryDirectory(prefix="coco4-mutants-")
    work = args.work_dir or Path(scratch.name) / "repo"
    try:
        copy_repo(work, args.from_head)
        for m in mutants:  # every snippet checked before minutes are spent on tests
            (work / m.path).write_text(apply(work, m))
        if not args.no_baseline:  # every mutant's tests, in one pytest run
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            status, seconds = run_tests(work, tests, args.timeout * 2)
            print(f"baseline, {len(tests)} tests unmutated: {status} ({seconds:.0f} s)",
                  flush=True)
            if status != "passed":
                raise Coco4Error("the chosen tests do not pass unmutated (run them to see "
                                     "which); fix them first, or every mutant counts as caught")
        results = {}
        for m in mutants:
            original = apply(work, m)
            try:
                status, seconds = run_tests(work, m.tests, args.timeout)
            finally:
                (work / m.path).write_text(original)
            results[m.name] = "survived" if status == "passed" else "caught"
            print(f"{results[m.name]:8} {m.name:38} ({status}, {seconds:.0f} s)", flush=True)
    finally:
        if scratch:
            scratch.cleanup()
    survivors = [n for n, r in results.items() if r == "survived"]
    print(f"\ncaught {len(results) - len(survivors)} of {len(results)} "
          f"({(len(results) - len(survivors)) / len(results):.0%})"
          + (f"; survived: {', '.join(survivors)}" if survivors else ""))
    return results


if __name__ == "__main__":
    cli.run(main, get_args_parser())
