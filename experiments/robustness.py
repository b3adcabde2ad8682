r"""Adversarial robustness (the paper's Sec. 4.2) and uncertainty (Alemi, Fischer & Dillon 2018) of
trained classifiers: loads workdirs written by `experiments.sweep_beta` (a beta sweep and the
baselines) and writes tables and figures into `--output`.

  python -m experiments.robustness --workdirs=workdirs/sweep,workdirs/det --output=workdirs/robust

For every member of every workdir:
- FGSM (L-inf) and PGD (L-inf and L2, random start, `--pgd_steps`) accuracy against epsilon, on the
  first `--num_images` test images; epsilons in [0, 1] pixel units. A stochastic model is attacked
  through its softmax averaged over `--attack_samples` posterior samples (expectation over
  transformation, fresh samples at every step) and judged with fresh samples.
- The targeted Carlini-Wagner L2 attack towards (label + 1) mod 10: its success rate, the accuracy
  left, and the mean L0 / L2 / L-inf sizes of the successful perturbations; and a grid of the first
  test zeros pushed to "1" (the paper's Fig. 3).
- Out-of-distribution detection of the other dataset's test images (Fashion-MNIST for a model of
  MNIST and the reverse), uniform noise and inverted images, with three scores: the rate
  KL(q(z|x) || N(0, I)) (`Run.rate`: the closed form, also for a model trained with a learned
  marginal), the predictive entropy and the max softmax probability; AUROC, AUPR and FPR at 95% TPR
  (scikit-learn; the out-of-distribution images are the positives, so FPR95 is the share of the
  test split flagged at the threshold that flags 95% of them).
- Calibration on the test split: ECE (15 bins), NLL, Brier, and a reliability diagram.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from vib_jax import attacks, data, metrics, plots, runs, uncertainty

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Trained workdirs (experiments.sweep_beta).")
_OUTPUT = flags.DEFINE_string("output", "workdirs/robustness", "Where tables and figures go.")
_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", 1000, "First N test images attacked (paper: 1000)."
)
_ATTACK_SAMPLES = flags.DEFINE_integer(
    "attack_samples", 12, "Posterior samples S of the averaged softmax that attacks differentiate."
)
_PREDICTIVE_SAMPLES = flags.DEFINE_integer(
    "predictive_samples", 12, "Posterior samples of the predictive distribution (OOD, calibration)."
)
_LINF_EPSILONS = flags.DEFINE_list(
    "linf_epsilons",
    ["0", "0.05", "0.1", "0.15", "0.2", "0.25", "0.3"],
    "L-inf sizes, [0, 1] units.",
)
_L2_EPSILONS = flags.DEFINE_list(
    "l2_epsilons", ["0", "0.5", "1", "1.5", "2", "2.5", "3"], "L2 sizes, [0, 1] units."
)
_PGD_STEPS = flags.DEFINE_integer("pgd_steps", 40, "PGD steps.")
_CW_STEPS = flags.DEFINE_integer(
    "cw_steps",
    200,
    "Adam steps of the Carlini-Wagner attack. At 200 and the learning rate 0.01, a pixel at an end "
    "of the range (MNIST's black background) moves by less than half a grey level: 1000 converge "
    "(README, robustness).",
)
_CW_C = flags.DEFINE_float("cw_c", 10.0, "The Carlini-Wagner constant c (no binary search).")
_CW_LEARNING_RATE = flags.DEFINE_float("cw_learning_rate", 0.01, "Its Adam learning rate.")
_CW_CONFIDENCE = flags.DEFINE_float(
    "cw_confidence", 0.0, "kappa: the margin (nats) by which the target must win during the attack."
)
_BATCH = flags.DEFINE_integer("batch_size", 500, "Images attacked at once.")

# Attack name -> (norm, flag of its epsilons).
ATTACKS = {
    "fgsm": ("linf", _LINF_EPSILONS),
    "pgd_linf": ("linf", _LINF_EPSILONS),
    "pgd_l2": ("l2", _L2_EPSILONS),
}
OOD_SCORES = ("rate", "entropy", "max_softmax")
# Each table's measured columns; the others, but the seed, say what was measured.
MEASURES = {
    "robustness": ("accuracy", "seconds"),
    "carlini_wagner": ("reached", "success", "accuracy", "l0_mean", "l2_mean", "linf_mean"),
    "calibration": ("ece", "nll", "brier"),
    "ood": ("auroc", "aupr", "fpr_at_95_tpr"),
}


def parse_epsilons(name: str, values) -> tuple[float, ...]:
    """Floats >= 0 from a flag's strings; ValueError naming the flag otherwise."""
    try:
        epsilons = tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"--{name} must be numbers, got {values}.") from None
    if not epsilons or any(not np.isfinite(e) or e < 0 for e in epsilons):
        raise ValueError(f"--{name} must be a non-empty list of numbers >= 0, got {values}.")
    return epsilons


def other_dataset(dataset: str) -> str:
    """The out-of-distribution dataset of a model trained on `dataset`."""
    return "fashion_mnist" if dataset == "mnist" else "mnist"


def attack_samples(run: runs.Run, requested: int) -> int:
    """S for a member of `run`: one for a deterministic model (no noise to average)."""
    return requested if run.task.model.stochastic else 1


@functools.partial(jax.jit, static_argnames=("model", "attack", "num_samples", "num_steps"))
def accuracy_under_attack(
    model, params, images, labels, epsilon, key, *, attack, num_samples, num_steps
):
    """The number of `images` `[B, D]` still classified right after `attack` at `epsilon` ([0, 1]
    units): the attack differentiates the S-sample averaged softmax, the verdict uses fresh
    samples."""
    predict = attacks.vib_log_predictive(model, params, num_samples)
    attack_key, verdict_key = jax.random.split(key)
    if attack == "fgsm":
        adversarial = attacks.fgsm(predict, images, labels, epsilon, attack_key)
    else:
        norm = ATTACKS[attack][0]
        adversarial = attacks.pgd(
            predict, images, labels, epsilon, attack_key, norm=norm, num_steps=num_steps
        )
    return jnp.sum(jnp.argmax(predict(adversarial, verdict_key), -1) == labels)


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "num_steps"))
def carlini_wagner(
    model, params, images, labels, key, *, num_samples, num_steps, c, learning_rate, confidence
):
    """The targeted CW-L2 attack towards (label + 1) mod 10: `(adversarial, reached, success,
    still_right)`, each `[B]` bool but the images. `reached`: the target won by `confidence` with
    the noise of the attack's own step; `success` and `still_right`: the verdict of fresh
    samples."""
    predict = attacks.vib_log_predictive(model, params, num_samples)
    targets = (labels + 1) % data.NUM_CLASSES
    attack_key, verdict_key = jax.random.split(key)
    adversarial, reached = attacks.carlini_wagner_l2(
        predict,
        images,
        targets,
        attack_key,
        num_steps=num_steps,
        learning_rate=learning_rate,
        c=c,
        confidence=confidence,
    )
    predicted = jnp.argmax(predict(adversarial, verdict_key), -1)
    return adversarial, reached, reached & (predicted == targets), predicted == labels


def robustness_rows(run: runs.Run, images, labels, label: dict) -> list[dict]:
    """One row per member, attack and epsilon: accuracy (%) under attack."""
    rows = []
    for m, member in enumerate(run.members):
        params = run.member_params(m)
        num_samples = attack_samples(run, _ATTACK_SAMPLES.value)
        for attack, (_, epsilons_flag) in ATTACKS.items():
            for epsilon in parse_epsilons(epsilons_flag.name, epsilons_flag.value):
                started = time.perf_counter()
                right = 0
                for start in range(0, images.shape[0], _BATCH.value):
                    batch = slice(start, start + _BATCH.value)
                    right += int(
                        accuracy_under_attack(
                            run.task.model,
                            params,
                            images[batch],
                            labels[batch],
                            jnp.float32(epsilon),
                            jax.random.key(start),
                            attack=attack,
                            num_samples=num_samples,
                            num_steps=_PGD_STEPS.value,
                        )
                    )
                seconds = time.perf_counter() - started
                rows.append(
                    label
                    | member
                    | dict(
                        attack=attack,
                        epsilon=epsilon,
                        accuracy=100.0 * right / images.shape[0],
                        seconds=round(seconds, 2),
                    )
                )
                logging.info(
                    "%s %s eps=%g: %.2f%% (%.1f s)",
                    label["model"],
                    attack,
                    epsilon,
                    rows[-1]["accuracy"],
                    seconds,
                )
    return rows


def carlini_wagner_rows(run: runs.Run, images, labels, label: dict):
    """One row per member: CW success (%) during the attack (`reached`) and by a fresh verdict
    (`success`), accuracy left (%), mean sizes of the successes; and the adversarial images of the
    member's first test zeros (for the figure)."""
    rows, zeros = [], []
    for m, member in enumerate(run.members):
        batches = [
            carlini_wagner(
                run.task.model,
                run.member_params(m),
                images[start : start + _BATCH.value],
                labels[start : start + _BATCH.value],
                jax.random.key(start),
                num_samples=attack_samples(run, _ATTACK_SAMPLES.value),
                num_steps=_CW_STEPS.value,
                c=jnp.float32(_CW_C.value),
                learning_rate=jnp.float32(_CW_LEARNING_RATE.value),
                confidence=jnp.float32(_CW_CONFIDENCE.value),
            )
            for start in range(0, images.shape[0], _BATCH.value)
        ]
        adversarial, reached, success, right = (np.concatenate(parts) for parts in zip(*batches))
        sizes = attacks.perturbation_sizes(images, adversarial)
        row = (
            label
            | member
            | dict(
                confidence=_CW_CONFIDENCE.value,
                reached=100.0 * reached.mean(),
                success=100.0 * success.mean(),
                accuracy=100.0 * right.mean(),
            )
        )
        for name, values in sizes.items():
            values = np.asarray(values)
            row[f"{name}_mean"] = float(values[success].mean()) if success.any() else float("nan")
        rows.append(row)
        zeros.append(adversarial[np.asarray(labels) == 0])
    return rows, zeros


def uncertainty_rows(run: runs.Run, in_images, in_labels, ood_sets: dict, label: dict):
    """Per member: calibration on the in-distribution test split, and per OOD set and score the
    detection metrics. Returns `(calibration_rows, ood_rows, reliability)`."""
    calibration, ood, reliability = [], [], []
    stochastic = run.task.model.stochastic  # a deterministic encoder has no rate and no noise
    num_samples = _PREDICTIVE_SAMPLES.value if stochastic else 1

    def scores(images):
        probs = np.asarray(run.predictive(images, num_samples))  # [M, N, C]
        by_name = dict(
            entropy=np.stack([uncertainty.predictive_entropy(p) for p in probs]),
            max_softmax=-np.stack([uncertainty.max_softmax(p) for p in probs]),
        )
        return probs, by_name | ({"rate": np.asarray(run.rate(images))} if stochastic else {})

    probs, in_scores = scores(in_images)
    out = {name: scores(images)[1] for name, images in ood_sets.items()}
    for m, member in enumerate(run.members):
        calibration.append(
            label
            | member
            | dict(
                ece=100.0 * uncertainty.expected_calibration_error(probs[m], in_labels),
                nll=uncertainty.negative_log_likelihood(probs[m], in_labels),
                brier=uncertainty.brier_score(probs[m], in_labels),
            )
        )
        reliability.append(uncertainty.reliability_bins(probs[m], in_labels))
        for ood_name, out_scores in out.items():
            for score in out_scores:
                result = uncertainty.ood_metrics(in_scores[score][m], out_scores[score][m])
                ood.append(label | member | dict(ood=ood_name, score=score) | result)
    return calibration, ood, reliability


def load_checked(workdirs) -> list[runs.Run]:
    """The runs, after checking every workdir: that their folder names differ, that each has
    finished, that they share one dataset and that the other dataset (the out-of-distribution
    images) is prepared; all before anything is loaded."""
    runs.workdir_labels(workdirs, "--workdirs")
    for workdir in workdirs:
        runs.require_finished(workdir, "--workdirs")
    configs = [runs.config_from_json(os.path.join(w, "config.json")) for w in workdirs]
    if len({config.dataset for config in configs}) > 1:
        listed = ", ".join(f"{w}: {c.dataset}" for w, c in zip(workdirs, configs))
        raise ValueError(f"--workdirs must be trained on one dataset, got {listed}.")
    data.check_prepared(other_dataset(configs[0].dataset))
    loaded = [runs.load(w) for w in workdirs]
    for run in loaded:
        if not hasattr(run.task.model, "num_classes"):
            raise ValueError(f"--workdirs: {run.workdir} is not a classifier ({run.config.task}).")
        check_finite(run)
    return loaded


def check_finite(run: runs.Run) -> None:
    """Raises ValueError naming the members of `run` whose evaluated (EMA) params hold a
    non-finite value (a diverged training): their predictions would be NaN, and the calibration
    metrics refuse them after the attacks have run."""
    diverged = np.zeros(len(run.members), bool)
    for leaf in jax.tree_util.tree_leaves(run.ema_params):
        diverged |= ~np.isfinite(np.asarray(leaf)).reshape(len(run.members), -1).all(axis=1)
    if diverged.any():
        named = [member for member, bad in zip(run.members, diverged) if bad]
        raise ValueError(
            f"--workdirs: {run.workdir} has members with non-finite params (diverged): {named}; "
            "leave the workdir out or retrain them."
        )


def main(argv) -> None:
    del argv
    if not _WORKDIRS.value:
        raise app.UsageError("--workdirs: give at least one trained workdir.")
    for name in (
        "num_images",
        "attack_samples",
        "predictive_samples",
        "pgd_steps",
        "cw_steps",
        "batch_size",
    ):
        if flags.FLAGS[name].value < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {flags.FLAGS[name].value}.")
    for flag in (_LINF_EPSILONS, _L2_EPSILONS):
        parse_epsilons(flag.name, flag.value)
    if _CW_C.value < 0 or _CW_CONFIDENCE.value < 0 or _CW_LEARNING_RATE.value <= 0:
        raise app.UsageError(
            "--cw_c and --cw_confidence must be >= 0 and --cw_learning_rate > 0, got "
            f"{_CW_C.value}, {_CW_CONFIDENCE.value} and {_CW_LEARNING_RATE.value}."
        )
    if os.path.exists(os.path.join(_OUTPUT.value, "config.json")):
        raise app.UsageError(
            f"--output={_OUTPUT.value} is a training workdir (it has config.json), whose "
            "results.md this would replace: give another folder."
        )
    loaded = load_checked(_WORKDIRS.value)
    dataset = loaded[0].config.dataset
    os.makedirs(_OUTPUT.value, exist_ok=True)

    images, labels = data.load_split(dataset, "test")
    attacked = (images[: _NUM_IMAGES.value], labels[: _NUM_IMAGES.value])
    ood_images = data.load_split(other_dataset(dataset), "test").images
    ood_sets = {
        other_dataset(dataset): ood_images,
        "uniform_noise": jax.random.uniform(jax.random.key(0), images.shape, minval=-1, maxval=1),
        "inverted": -images,
    }
    tables = {"robustness": [], "carlini_wagner": [], "calibration": [], "ood": []}
    zeros, reliability = [], []
    for run, model in zip(loaded, runs.workdir_labels(_WORKDIRS.value, "--workdirs")):
        label = {"model": model}
        tables["robustness"] += robustness_rows(run, *attacked, label)
        cw_rows, cw_zeros = carlini_wagner_rows(run, *attacked, label)
        tables["carlini_wagner"] += cw_rows
        zeros += cw_zeros
        calibration, ood, bins = uncertainty_rows(run, images, labels, ood_sets, label)
        tables["calibration"] += calibration
        tables["ood"] += ood
        reliability += bins
    write_outputs(tables, zeros, reliability, attacked)


def _distinguishing_columns(rows: list[dict], excluded: Sequence[str] = ()) -> list[str]:
    """The rows' columns, in order and but `excluded`, that tell the rows apart: the model, the
    seed, and every other column whose value varies."""
    columns = [c for c in dict.fromkeys(k for row in rows for k in row) if c not in excluded]
    varying = set(metrics.varying_keys(rows, columns))
    return [c for c in columns if c in ("model", "seed") or c in varying]


def _setting_columns(name: str, rows: list[dict]) -> list[str]:
    """The columns of table `name` that tell its settings apart: those that tell rows apart, but
    the seed and the measures."""
    return [c for c in _distinguishing_columns(rows, MEASURES[name]) if c != "seed"]


def member_table(name: str, rows: list[dict]) -> str:
    """Markdown: table `name` row by row, with the columns that tell the rows apart and every
    measure (also one that is the same in every row, e.g. a success rate of 1)."""
    return metrics.markdown_table(
        rows, [*_distinguishing_columns(rows, MEASURES[name]), *MEASURES[name]]
    )


def seed_summary_table(name: str, rows: list[dict]) -> str:
    """Markdown: table `name`'s measures as mean ± sd over the seeds of each model and setting
    (the columns that vary between rows, but the seed)."""
    group = _setting_columns(name, rows)
    summary = metrics.seed_summary(rows, group, MEASURES[name])
    return metrics.markdown_summary(summary, group, MEASURES[name])


def write_outputs(tables, zeros, reliability, attacked) -> None:
    """CSV and Markdown per table (`results.md` per member, `summary.md` over seeds), and the
    figures."""
    path = lambda name: os.path.join(_OUTPUT.value, name)
    markdown, summary = [], []
    for name, rows in tables.items():
        columns = list(dict.fromkeys(k for row in rows for k in row))
        metrics.write_csv(path(f"{name}.csv"), rows, columns)
        markdown.append(f"## {name}\n\n{member_table(name, rows)}")
        summary.append(f"## {name}\n\n{seed_summary_table(name, rows)}")
    metrics.write_text(path("results.md"), "\n".join(markdown))
    metrics.write_text(path("summary.md"), "\n\n".join(summary) + "\n")
    for attack in ATTACKS:
        rows = [r for r in tables["robustness"] if r["attack"] == attack]
        settings = [c for c in _setting_columns("robustness", rows) if c != "epsilon"]
        plots.accuracy_vs_epsilon(rows, attack, settings, path(f"accuracy_{attack}.png"))
    plots.perturbation_sizes_vs_beta(
        tables["carlini_wagner"],
        _setting_columns("carlini_wagner", tables["carlini_wagner"]),
        path("cw_sizes.png"),
    )
    # One row per member, in the order of `zeros` and `reliability`: the seeds of each setting.
    members = tables["carlini_wagner"]
    group = _setting_columns("carlini_wagner", members)
    settings: dict[tuple, list[int]] = {}
    for m, member in enumerate(members):
        settings.setdefault(tuple(member[c] for c in group), []).append(m)
    labels = [plots.member_label(members[indices[0]], group) for indices in settings.values()]
    shown = min(len(z) for z in zeros)
    if shown:  # the attacked images hold a zero; the grid shows each setting's first seed
        grid = np.stack([zeros[indices[0]][: min(shown, 10)] for indices in settings.values()])
        plots.image_grid(
            data.to_unit_interval(grid.reshape(len(settings), -1, *data.IMAGE_SHAPE)),
            [
                f"{label} seed={members[indices[0]]['seed']:g}"
                for label, indices in zip(labels, settings.values())
            ],
            'first test zeros pushed to "1" (CW L2)',
            path("cw_zeros_to_one.png"),
        )
    pooled = [
        uncertainty.pooled_reliability_bins([reliability[m] for m in indices])
        for indices in settings.values()
    ]
    plots.reliability_diagram(pooled, labels, path("reliability.png"))
    print("\n\n".join(summary))


if __name__ == "__main__":
    app.run(main)
