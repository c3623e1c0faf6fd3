"""The run bundle's plots: the total loss is drawn on top of its terms, and no axis label is cut off."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from mrbridge.optimize.plots import flip_angle_figure, loss_figure, write_plots
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import load_protocol
from tests.helpers import REPO

#: a one-term loss: the total equals mse step by step, the case where it used to vanish under the term
HISTORY = [{"step": s, "loss": 1.0 / s, "mse": 1.0 / s, "hardware": 0.0, **({"val_loss": 1.1 / s} if s % 5 == 0
                                                                          else {})} for s in range(1, 21)]


def test_total_loss_is_on_top_and_distinguishable() -> None:
    fig = loss_figure(HISTORY)
    lines = fig.axes[0].get_lines()
    top = max(lines, key=lambda line: line.get_zorder())
    assert top.get_label() == "total loss" and lines[-1] is top  # drawn last and above every term
    assert top.get_linestyle() == "--" and top.get_linewidth() > max(x.get_linewidth() for x in lines[:-1])
    assert list(top.get_ydata()) == pytest.approx([r["loss"] for r in HISTORY])
    plt.close(fig)


def test_flip_angle_label_lies_inside_the_canvas() -> None:
    seq = build(load_protocol(REPO / "protocols" / "gre.yaml"), matrix=8)
    fig = flip_angle_figure(seq)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    width, height = fig.canvas.get_width_height()
    ax = fig.axes[0]
    for label in (ax.yaxis.label, ax.xaxis.label):
        box = label.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, (label.get_text(), box)
    plt.close(fig)


def test_write_plots_writes_the_three_pngs(tmp_path: Path) -> None:
    write_plots(tmp_path / "plots", HISTORY, build(load_protocol(REPO / "protocols" / "gre.yaml"), matrix=8))
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["flip_angles.png", "kspace.png", "loss.png"]
