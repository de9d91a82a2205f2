"""Plain inline-SVG plots for the report page: a line plot, a horizontal grouped bar chart and a heat map.

No plotting library: the page must stay one self-contained file, and these three plots need little. Every plot is
an `<svg class="plot">` whose data marks carry class `point` and whose axis titles are `<text class="axis-label">`,
so that a test (or a reader's script) can find them.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

# matplotlib's "tab10", so that series look as readers expect from other plots
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
FONT = 'font-family="sans-serif"'
CHARACTER_WIDTH = 6.5  # rough width of an 11 px sans-serif character, to size margins for labels
LEGEND_ROW = 15  # pixels per legend entry


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]  # (x, y); points with y None are left out by the caller


@dataclass
class Marker:
    """A point to point out on a line plot (e.g. the best threshold): a dashed vertical line and a note."""

    x: float
    y: float
    note: str
    colour: str = "#d62728"


@dataclass
class Frame:
    """The plotting area inside an SVG of `width` x `height` and the data ranges it maps."""

    width: int
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    left: float = 56
    right: float = 16
    top: float = 28
    bottom: float = 44
    parts: list[str] = field(default_factory=list)

    def x(self, value: float) -> float:
        low, high = self.x_range
        return self.left + (self.width - self.left - self.right) * (value - low) / ((high - low) or 1)

    def y(self, value: float) -> float:
        low, high = self.y_range
        return self.height - self.bottom - (self.height - self.top - self.bottom) * (value - low) / ((high - low) or 1)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) from a tick at or below `low` to one at or
    above `high`, so that an axis ending at the outer ticks holds every value."""
    if high <= low:
        return [low]
    raw_step = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(multiple * magnitude for multiple in (1, 2, 5, 10) if multiple * magnitude >= raw_step)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(index * step, 10) for index in range(first, last + 1)]


def tick_text(value: float, ticks: list[float]) -> str:
    """A tick label with as many decimals as the tick step needs."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{value:.{decimals}f}"


def _text(x: float, y: float, text: str, *, css_class: str, anchor: str = "middle", size: int = 11,
          rotate: float | None = None, colour: str = "#222", halo: bool = False) -> str:
    """A text element; `halo` outlines it in white so that it stays readable over lines."""
    turn = f' transform="rotate({rotate:g} {x:.1f} {y:.1f})"' if rotate is not None else ""
    outline = ' stroke="#fff" stroke-width="3" paint-order="stroke"' if halo else ""
    return (f'<text class="{css_class}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{colour}" {FONT}{outline}{turn}>{html.escape(text)}</text>')


def _svg(frame: Frame, title: str) -> str:
    return (f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{frame.width}" height="{frame.height}" '
            f'viewBox="0 0 {frame.width} {frame.height}" role="img" aria-label="{html.escape(title)}">'
            + _text(frame.width / 2, 17, title, css_class="plot-title", size=13)
            + "".join(frame.parts) + "</svg>")


def _axes(frame: Frame, x_label: str, y_label: str, x_ticks: list[float] | None, y_ticks: list[float]) -> None:
    """Grid lines, tick labels, the two axis lines and their titles."""
    bottom, left = frame.height - frame.bottom, frame.left
    for value in y_ticks:
        y = frame.y(value)
        frame.parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{frame.width - frame.right}" y2="{y:.1f}" '
                           'stroke="#e4e4e4"/>')
        frame.parts.append(_text(left - 5, y + 4, tick_text(value, y_ticks), css_class="tick-label", anchor="end"))
    for value in x_ticks or []:
        x = frame.x(value)
        frame.parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#444"/>')
        frame.parts.append(_text(x, bottom + 16, tick_text(value, x_ticks), css_class="tick-label"))
    frame.parts.append(f'<line x1="{left}" y1="{frame.top}" x2="{left}" y2="{bottom}" stroke="#444"/>')
    frame.parts.append(f'<line x1="{left}" y1="{bottom}" x2="{frame.width - frame.right}" y2="{bottom}" '
                       'stroke="#444"/>')
    frame.parts.append(_text((left + frame.width - frame.right) / 2, bottom + 36, x_label,
                             css_class="axis-label", size=12))
    middle = (frame.top + bottom) / 2
    frame.parts.append(_text(14, middle, y_label, css_class="axis-label", size=12, rotate=-90))


def _legend(frame: Frame, names: list[str], colours: list[str]) -> None:
    """Legend entries below the x axis title, one a line (`frame.bottom` has room for them), so that they never
    hide data."""
    for row, (name, colour) in enumerate(zip(names, colours)):
        y = frame.height - frame.bottom + 52 + LEGEND_ROW * row
        frame.parts.append(f'<rect x="{frame.left}" y="{y - 9}" width="12" height="10" fill="{colour}"/>')
        frame.parts.append(_text(frame.left + 16, y, name, css_class="legend", anchor="start"))


def line_plot(series: list[Series], *, title: str, x_label: str, y_label: str,
              y_range: tuple[float, float] | None = None, markers: tuple[Marker, ...] = (),
              integer_x: bool = False, width: int = 520, height: int = 300) -> str:
    """Lines with a marker at each point; a legend below when there are several series. `y_range` fixes the y axis
    (e.g. 0..100 for percentages); otherwise it spans the data. With `integer_x` (epochs) x ticks are whole."""
    drawn = [one for one in series if one.points]
    xs = [x for one in drawn for x, _ in one.points]
    ys = [y for one in drawn for _, y in one.points]
    if not xs:
        return f'<p class="no-plot">{html.escape(title)}: no data.</p>'
    low_y, high_y = y_range or (min(ys), max(ys))
    if high_y == low_y:  # a flat line (or a single point) still needs a y span
        low_y, high_y = low_y - 1 if low_y else -1, high_y + 1 if high_y else 1
    y_ticks = nice_ticks(low_y, high_y)
    low_x, high_x = min(xs), max(xs)
    if high_x == low_x:
        low_x, high_x = low_x - 1, high_x + 1
    x_ticks = nice_ticks(low_x, high_x)
    legend_rows = len(drawn) if len(drawn) > 1 else 0
    frame = Frame(width, height + LEGEND_ROW * legend_rows, (x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1]))
    frame.bottom += LEGEND_ROW * legend_rows
    if integer_x:
        x_ticks = [tick for tick in x_ticks if tick == int(tick)]
    frame.left = max(frame.left, 26 + CHARACTER_WIDTH * max(len(tick_text(t, y_ticks)) for t in y_ticks))
    _axes(frame, x_label, y_label, x_ticks, y_ticks)
    colours = [COLOURS[index % len(COLOURS)] for index in range(len(drawn))]
    for one, colour in zip(drawn, colours):
        coordinates = [(frame.x(x), frame.y(y)) for x, y in one.points]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coordinates)
        frame.parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        radius = 2 if len(coordinates) > 30 else 3  # many points: small markers so the line stays visible
        for (x, y), (value_x, value_y) in zip(coordinates, one.points):
            frame.parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{colour}">'
                               f"<title>{html.escape(one.name)}: {value_x:g}, {value_y:.4g}</title></circle>")
    for marker in markers:
        x, y = frame.x(marker.x), frame.y(marker.y)
        frame.parts.append(f'<line x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.height - frame.bottom}" '
                           f'stroke="{marker.colour}" stroke-dasharray="4 3"/>')
        frame.parts.append(f'<circle class="marker" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="none" '
                           f'stroke="{marker.colour}" stroke-width="2"/>')
        # the note sits beside the line, on the side with room for it
        room_right = width - frame.right - x > len(marker.note) * CHARACTER_WIDTH + 8
        frame.parts.append(_text(x + 6 if room_right else x - 6, frame.top + 12, marker.note, css_class="annotation",
                                 anchor="start" if room_right else "end", colour=marker.colour, halo=True))
    if len(drawn) > 1:
        _legend(frame, [one.name for one in drawn], colours)
    return _svg(frame, title)


def bar_chart(groups: list[str], values: dict[str, list[float | None]], *, title: str, x_label: str, y_label: str,
              x_range: tuple[float, float], width: int = 520) -> str:
    """Horizontal bars: one group of bars per name in `groups` (named along the y axis), in each one bar per entry
    of `values` (its name → one value per group, None for no bar), with a legend above."""
    bar, gap = 10, 8
    frame = Frame(width, 0, x_range, (0, 1))
    frame.left = 32 + CHARACTER_WIDTH * max(len(group) for group in groups)  # the y axis title goes left of them
    group_height = bar * len(values) + gap
    frame.top = 28 + LEGEND_ROW * len(values)  # room for the legend
    frame.height = int(frame.top + group_height * len(groups) + frame.bottom)
    x_ticks = nice_ticks(*x_range)
    bottom = frame.height - frame.bottom
    for value in x_ticks:
        x = frame.x(value)
        frame.parts.append(f'<line x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{bottom}" stroke="#e4e4e4"/>')
        frame.parts.append(_text(x, bottom + 16, tick_text(value, x_ticks), css_class="tick-label"))
    colours = [COLOURS[index % len(COLOURS)] for index in range(len(values))]
    for row, group in enumerate(groups):
        top = frame.top + gap / 2 + row * group_height
        frame.parts.append(_text(frame.left - 6, top + bar * len(values) / 2 + 4, group, css_class="tick-label",
                                 anchor="end"))
        for position, ((name, numbers), colour) in enumerate(zip(values.items(), colours)):
            if numbers[row] is None:
                continue
            frame.parts.append(f'<rect class="point" x="{frame.left}" y="{top + position * bar:.1f}" '
                               f'width="{max(frame.x(numbers[row]) - frame.left, 0.5):.1f}" height="{bar - 1}" '
                               f'fill="{colour}"><title>{html.escape(group)}, {html.escape(name)}: '
                               f"{numbers[row]:.4g}</title></rect>")
    frame.parts.append(f'<line x1="{frame.left}" y1="{frame.top}" x2="{frame.left}" y2="{bottom}" stroke="#444"/>')
    frame.parts.append(f'<line x1="{frame.left}" y1="{bottom}" x2="{width - frame.right}" y2="{bottom}" '
                       'stroke="#444"/>')
    frame.parts.append(_text((frame.left + width - frame.right) / 2, frame.height - 8, x_label,
                             css_class="axis-label", size=12))
    frame.parts.append(_text(14, (frame.top + bottom) / 2, y_label, css_class="axis-label", size=12, rotate=-90))
    for row, (name, colour) in enumerate(zip(values, colours)):
        y = 38 + LEGEND_ROW * row
        frame.parts.append(f'<rect x="{frame.left}" y="{y - 8}" width="12" height="10" fill="{colour}"/>')
        frame.parts.append(_text(frame.left + 16, y, name, css_class="legend", anchor="start"))
    return _svg(frame, title)


def heat_map(shares: list[list[float | None]], counts: list[list[int]], labels: list[str], *, title: str,
             x_label: str, y_label: str) -> str:
    """A square matrix as coloured cells (white 0 to dark blue 1 of `shares`, grey where None), rows top to
    bottom, columns left to right, with `labels` along both axes; each cell's tooltip gives its share and count.
    Cells shrink with the number of classes; the class names are left out when they would not fit."""
    size = len(labels)
    cell = max(4.0, min(32.0, 480 / max(size, 1)))
    show_labels = cell >= 9
    label_room = 12 + CHARACTER_WIDTH * max(len(label) for label in labels) if show_labels else 8
    frame = Frame(0, 0, (0, 1), (0, 1), left=label_room + 24, top=36, bottom=label_room + 26, right=72)
    frame.width = int(frame.left + cell * size + frame.right)
    frame.height = int(frame.top + cell * size + frame.bottom)
    for row in range(size):
        for column in range(size):
            share = shares[row][column]
            colour = "#dddddd" if share is None else _blue(share)
            x, y = frame.left + column * cell, frame.top + row * cell
            tip = f"{labels[row]} → {labels[column]}: " + ("no pixels" if share is None else
                                                          f"{100 * share:.1f}% ({counts[row][column]} px)")
            frame.parts.append(f'<rect class="point" x="{x:.1f}" y="{y:.1f}" width="{cell:.1f}" '
                               f'height="{cell:.1f}" fill="{colour}"><title>{html.escape(tip)}</title></rect>')
    bottom = frame.top + cell * size
    if show_labels:
        for index, label in enumerate(labels):
            middle = index * cell + cell / 2
            frame.parts.append(_text(frame.left - 4, frame.top + middle + 4, label, css_class="tick-label",
                                     anchor="end"))
            x = frame.left + middle
            frame.parts.append(_text(x + 4, bottom + 6, label, css_class="tick-label", anchor="end", rotate=-90))
    frame.parts.append(f'<rect x="{frame.left}" y="{frame.top}" width="{cell * size:.1f}" height="{cell * size:.1f}" '
                       'fill="none" stroke="#444"/>')
    frame.parts.append(_text(frame.left + cell * size / 2, frame.height - 8, x_label, css_class="axis-label", size=12))
    frame.parts.append(_text(14, frame.top + cell * size / 2, y_label, css_class="axis-label", size=12, rotate=-90))
    _colour_scale(frame, frame.left + cell * size + 16, frame.top, min(cell * size, 160))
    return _svg(frame, title)


def _blue(share: float) -> str:
    """White (0) to dark blue (1)."""
    share = min(max(share, 0.0), 1.0)
    red, green, blue = (round(255 + (target - 255) * share) for target in (8, 48, 107))
    return f"rgb({red},{green},{blue})"


def _colour_scale(frame: Frame, x: float, y: float, height: float) -> None:
    """The heat map's key: a vertical gradient from 100% (top) to 0%."""
    steps = 10
    for step in range(steps):
        frame.parts.append(f'<rect x="{x:.1f}" y="{y + step * height / steps:.1f}" width="12" '
                           f'height="{height / steps + 0.5:.1f}" fill="{_blue(1 - step / steps)}"/>')
    frame.parts.append(_text(x + 16, y + 9, "100%", css_class="tick-label", anchor="start"))
    frame.parts.append(_text(x + 16, y + height, "0%", css_class="tick-label", anchor="start"))
