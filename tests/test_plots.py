"""Tests of vib_jax.plots: the sweep's figures are drawn from its results files."""
import matplotlib.pyplot as plt
import numpy as np

from vib_jax import metrics, plots


def test_sweep_figures_are_pngs_drawn_from_the_results_files(tmp_path):
    betas = [0.0, 1e-6, 1e-3, 1.0]
    split = {"error_avg": np.array([0.012, 0.012, 0.013, 0.6]), "error_1": np.array([0.013, 0.013, 0.015, 0.7]),
             "error_mean": np.array([0.012, 0.012, 0.013, 0.6]), "izx_bound_bits": np.array([900.0, 300.0, 40.0, 0.1]),
             "izy_bound_bits": np.array([3.3, 3.3, 3.25, 0.5])}
    metrics.write_csv(str(tmp_path / "results.csv"), metrics.result_rows(betas, 2, split, split, 1.0))
    for epoch in (1, 2):
        metrics.append_jsonl(str(tmp_path / "metrics.jsonl"),
                             metrics.epoch_records(epoch, betas, 1e-4, 1.0, test=split))
    paths = plots.sweep_figures(str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["test_error_vs_beta.png", "information_plane.png",
                                                    "learning_curves.png"]
    for path in paths:
        image = plt.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05  # something is drawn


def test_information_axis_is_logarithmic_only_over_a_wide_range():
    figure, (wide, narrow) = plt.subplots(1, 2)
    plots._log_scale_if_wide(wide, [0.1, 900.0])
    plots._log_scale_if_wide(narrow, [205.0, 216.0])
    assert wide.get_xscale() == "log" and narrow.get_xscale() == "linear"
    plt.close(figure)
