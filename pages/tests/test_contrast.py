"""WCAG AA contrast of the console's colours, read from static/console/console.css itself:
text of every badge (and the other small text) 4.5:1 on its background, the borders of inputs
and buttons 3:1 on the background they sit on. A badge another change adds is checked too."""

import re
from pathlib import Path

import pytest

CSS = (Path(__file__).parents[2] / "static/console/console.css").read_text()
TEXT, BORDER = 4.5, 3.0


def rules(css: str) -> list[tuple[list[str], dict[str, str]]]:
    """Innermost `selectors { declarations }` blocks (those inside @media too)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    found = []
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        decls = dict(
            (name.strip(), value.strip())
            for name, _, value in (d.partition(":") for d in body.split(";") if ":" in d)
        )
        found.append(([s.strip() for s in selectors.split(",")], decls))
    return found


RULES = rules(CSS)
ROOT = next(decls for selectors, decls in RULES if selectors == [":root"])


def resolve(value: str) -> str:
    while (var := re.search(r"var\((--[\w-]+)\)", value)) is not None:
        value = value.replace(var.group(0), ROOT[var.group(1)])
    return value


def colour(value: str) -> str:
    found = re.search(r"#[0-9a-fA-F]{6}\b|#[0-9a-fA-F]{3}\b", resolve(value))
    assert found, f"no hex colour in {value!r}"
    hex_ = found.group(0)[1:]
    return "#" + (hex_ if len(hex_) == 6 else "".join(c * 2 for c in hex_)).lower()


def luminance(hex_colour: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def ratio(one: str, other: str) -> float:
    high, low = sorted((luminance(colour(one)), luminance(colour(other))), reverse=True)
    return (high + 0.05) / (low + 0.05)


def declared(selector: str, prop: str) -> str | None:
    """The last value of `prop` in a rule naming exactly `selector`."""
    values = [d[prop] for sels, d in RULES if selector in sels and prop in d]
    return values[-1] if values else None


def own(selector: str) -> tuple[str | None, str | None]:
    return declared(selector, "color"), declared(selector, "background")


TOPBAR = declared(".topbar", "background")


def test_the_ratio_is_computed_as_wcag_defines_it() -> None:
    assert ratio("#000", "#fff") == pytest.approx(21.0)
    assert ratio("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    assert ratio("#fff", "#fff") == pytest.approx(1.0)


BADGES = sorted({s for sels, _ in RULES for s in sels if re.fullmatch(r"\.badge(-[\w-]+)?", s)})


def test_badges_are_found() -> None:
    assert ".badge" in BADGES and ".badge-reason" in BADGES and len(BADGES) >= 6


@pytest.mark.parametrize("badge", BADGES)
def test_badge_text_has_4_5_to_1(badge: str) -> None:
    ink = declared(badge, "color") or declared(".badge", "color")
    paper = declared(badge, "background") or declared(".badge", "background")
    assert ink and paper
    assert ratio(ink, paper) >= TEXT, f"{badge}: {ink} on {paper} is {ratio(ink, paper):.2f}:1"


@pytest.mark.parametrize(
    ("what", "ink", "paper"),
    [
        ("muted text on a card", "var(--muted)", "var(--card)"),
        ("muted text on the page", "var(--muted)", "var(--bg)"),
        ("muted text on the welcome card", "var(--muted)", "#f5f7fe"),
        ("text", "var(--ink)", "var(--bg)"),
        ("errors", "var(--bad)", "var(--card)"),
        ("links", "var(--brand)", "var(--card)"),
        ("success message", *own(".msg-success")),
        ("warning message", *own(".msg-warning")),
        ("error message", *own(".msg-error")),
        ("user name in the header", declared(".signout .who", "color"), TOPBAR),
        ("navigation", declared(".mainnav a", "color"), TOPBAR),
        ("the 429s card", declared("#stat-throttled .stat-value", "color"), "var(--card)"),
        ("the errors card", declared("#stat-errors .stat-value", "color"), "var(--card)"),
    ],
)
def test_other_text_has_4_5_to_1(what: str, ink: str | None, paper: str | None) -> None:
    assert ink and paper, what
    assert ratio(ink, paper) >= TEXT, f"{what}: {ratio(ink, paper):.2f}:1"


def border_colour(selector: str) -> str:
    border = declared(selector, "border")
    assert border, f"{selector} has no border"
    return border


INPUTS = ".field input[type=text]"


@pytest.mark.parametrize(
    ("what", "selector", "paper"),
    [
        ("inputs on a card", INPUTS, "var(--card)"),
        ("inputs on their own background", INPUTS, declared(INPUTS, "background")),
        ("the token field", ".token", declared(".token", "background")),
        ("buttons", ".btn", "var(--card)"),
        ("the sign-out button", ".btn-quiet", declared(".topbar", "background")),
    ],
)
def test_control_borders_have_3_to_1(what: str, selector: str, paper: str | None) -> None:
    border = declared(selector, "border-color") or border_colour(selector)
    assert paper
    assert ratio(border, paper) >= BORDER, f"{what}: {ratio(border, paper):.2f}:1"
