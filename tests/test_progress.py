"""The CLI's tqdm progress: resumed work starts where it left off."""

import io

from mlhk_viz.progress import TqdmProgress


def test_resumed_bar_starts_at_done_and_counts_only_new_work():
    out = io.StringIO()
    progress = TqdmProgress(file=out)
    progress(990, 2000, "PBE x")  # a resumed job's first report: 990 frames were done before
    bar = progress._bars["PBE x"]
    assert bar.n == 990 and bar.initial == 990
    progress(1000, 2000, "PBE x")
    assert bar.n == 1000
    # tqdm's rate counts n - initial: the 10 frames of this run, not 1000
    assert bar.format_dict["n"] - bar.format_dict["initial"] == 10
    progress(2000, 2000, "PBE x")
    assert "PBE x" not in progress._bars  # closed when complete
    assert "2000/2000" in out.getvalue()


def test_a_new_total_starts_a_new_bar():
    out = io.StringIO()
    progress = TqdmProgress(file=out)
    progress(0, 10, "stage")
    first = progress._bars["stage"]
    progress(3, 20, "stage")
    second = progress._bars["stage"]
    assert second is not first and second.total == 20 and second.n == 3
    progress.close()
    assert progress._bars == {}
