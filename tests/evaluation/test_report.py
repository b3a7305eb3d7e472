"""The evaluation report names its numbers and says what it could not measure."""

import numpy as np
import pandas as pd

from generatect_kedro.evaluation.report import FIGURES, auroc_figure, hu_histogram_figure, montage_figure, render_markdown


def _role(fvd, ratio, version):
    return {"versions": {"transformer": version, "superres": "1"}, "generated_volumes": 6,
            "frechet": {"fvd_3d/classifier": {"value": fvd, "extractor": "ct-classifier (this run's)"},
                        "fid_2d/inception": {"value": None, "extractor": "inception-v3",
                                             "reason": "needs at least 2 real and 2 generated volumes"},
                        "unavailable": {"i3d": "I3D: no TorchScript file at /nowhere.pt"}},
            "text_alignment": {"mean_auroc_generated": 0.7, "mean_auroc_real": 0.9, "auroc_ratio": ratio,
                               "common_labels": 2,
                               "generated_table": [{"label": "Cardiomegaly", "evaluable": True, "auroc": 0.75,
                                                    "positives": 3}],
                               "real_table": [{"label": "Cardiomegaly", "evaluable": True, "auroc": 0.95}]},
            "hu_sanity": {"flagged_fraction": 0.5, "flagged_volumes": 3, "generated_volumes": 6,
                          "flags": [{"volume": "gen-1", "reason": "lung mean -300 is above the real range"}],
                          "real_median": {"lung/mean": -850.0}, "generated_median": {"lung/mean": -700.0}},
            "hu_histogram": {"edges": [-1000, 0, 1000], "real": [0.6, 0.4], "generated": [0.5, 0.5]}}


def test_markdown_puts_challenger_beside_champion_and_names_networks_and_gaps():
    results = {"roles": {"challenger": _role(12.345, 0.5, "7"), "champion": _role(20.5, 0.25, "6")},
               "real_test_volumes": 6, "test_splits": ["test"]}
    utility = pd.DataFrame([
        {"arm": "real", "real_volumes": 10, "synthetic_volumes": 0, "label": "mean", "evaluable": True,
         "reason": "2 of 18 labels evaluable", "auroc": 0.81, "average_precision": 0.6, "positives_train": 5},
        {"arm": "synthetic", "real_volumes": 0, "synthetic_volumes": 10, "label": "mean", "evaluable": True,
         "reason": "1 of 18 labels evaluable", "auroc": 0.66, "average_precision": 0.4, "positives_train": 5}])
    classifier = {"mean_auroc": 0.81, "mean_average_precision": 0.6, "evaluable_labels": 2, "train_volumes": 10,
                  "input_shape": [17, 64, 64], "table": []}
    text = render_markdown(results, utility, classifier, {"superres/eval/diffusion/psnr_hu": 19.04},
                           {"evaluation/fvd_3d/classifier": 12.345})
    assert "transformer v7" in text and "transformer v6" in text
    assert "| fvd_3d | classifier | 12.345 | 20.500 | ct-classifier (this run's) |" in text
    assert "n/a (needs at least 2 real and 2 generated volumes)" in text
    assert "i3d features not computed: I3D: no TorchScript file" in text
    assert "| auroc_ratio | 0.500 | 0.250 |" in text
    assert "| Cardiomegaly | 0.750 | 0.950 | 3 |" in text
    assert "3 of 6 generated volumes outside the real range" in text and "gen-1" in text
    assert "| synthetic | 0 | 10 | 0.660 | 0.400 | 1 of 18 labels evaluable |" in text
    assert "`evaluation/fvd_3d/classifier` | 12.3450" in text and "19.0400" in text
    assert all(name in text for name in FIGURES.values())


def test_report_without_champion_or_utility_says_so_and_figures_still_draw():
    results = {"roles": {"challenger": _role(1.0, 1.0, "1")}, "skipped": {"champion": "no champion yet"}}
    text = render_markdown(results, pd.DataFrame(), {}, {}, {})
    assert "champion: not evaluated: no champion yet" in text and "Not run" in text
    for figure in (auroc_figure(pd.DataFrame(columns=["arm", "label", "evaluable", "auroc"])),
                   hu_histogram_figure(results["roles"]),
                   montage_figure([{"prompt": "65 years old male: Cardiomegaly.",
                                    "real": np.zeros((3, 4, 4)), "generated": np.ones((3, 4, 4))}]),
                   montage_figure([])):
        assert figure.axes
