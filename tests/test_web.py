"""The web demo in a real browser: Debian's Chromium, headless, driven by Playwright.

Digits are drawn with mouse strokes (and, at phone size, with a finger through touch
events), the page's answer and probability bars are checked, a photo is uploaded, and
every request the page makes must stay on 127.0.0.1. Set TINYDIGITS_SCREENSHOT=1 to
also refresh docs/web-demo.png, the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from web_helpers import (
    ALL_LABEL,
    CHROMIUM,
    DIGITS,
    PAGE_MODELS,
    SCREENSHOT,
    Page,
    on_paper,
    shipped_models,
    shipped_reader,
)

from tinydigits.models import DEFAULT_READER, get_spec
from tinydigits.predict import predict_image

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
pytest.importorskip("playwright.sync_api")
pytest.importorskip("flask")


@pytest.fixture(scope="module")
def live():
    from tinydigits.deploy.serve import BackgroundServer, create_app

    # As `tinydigits serve` serves them: the digit models and the number reader.
    server = BackgroundServer(create_app({**shipped_models(), DEFAULT_READER: shipped_reader()}))
    yield server
    server.close()


@pytest.fixture
def page(browser, live) -> Iterator[Page]:
    # Reduced motion: no bar transitions, so widths are final once an answer is shown.
    demo = Page(browser, live, viewport={"width": 1280, "height": 820}, reduced_motion="reduce")
    yield demo
    demo.check_stayed_local()
    demo.context.close()


def test_digits_drawn_with_the_mouse_are_read_as_you_draw(page):
    p = page.page
    assert p.locator("#results .digit").inner_text() == "\u2013"  # nothing yet
    # The 1, slowly: the answer appears while the button is still down.
    first, middle, last = page.points(DIGITS[1][0])
    p.mouse.move(*first)
    p.mouse.down()
    p.mouse.move(*middle, steps=10)
    p.wait_for_function("() => document.querySelector('#results .digit').textContent !== '\u2013'")
    p.mouse.move(*last, steps=10)
    p.mouse.up()
    page.idle()
    page.check_reads(1)
    for digit in (7, 0):
        p.get_by_role("button", name="Clear").click()
        assert p.locator("#results .digit").inner_text() == "\u2013" and not p.locator("#seen").is_visible()
        page.draw(DIGITS[digit])
        page.idle()
        page.check_reads(digit)
    predictions = [u for u in page.requests if u.endswith("/api/predict")]
    assert len(predictions) > 3  # more than one per digit: it reads as you draw


def test_a_number_written_on_the_wide_pad_is_read_with_a_box_per_digit(page):
    p = page.page
    p.get_by_label(ALL_LABEL).check()  # the digit models: no part in reading a number
    p.get_by_label("A number").check()
    assert not p.locator("#models").is_visible()
    box = p.locator("#pad").bounding_box()
    assert box["width"] > 1.9 * box["height"]  # twice as wide as tall
    # A 1 in the left half of the pad and a 7 in the right half.
    for offset, digit in ((0.0, 1), (0.5, 7)):
        page.draw([[(offset + x / 2, y) for x, y in stroke] for stroke in DIGITS[digit]])
    page.idle()
    card = p.locator("#results .card")
    # One reading, the server's.
    assert card.count() == 1 and card.get_attribute("data-model") == DEFAULT_READER
    assert card.locator(".digit").inner_text() == "17"
    rows = card.locator(".number-digits li")
    assert rows.count() == 2 and [rows.nth(i).get_attribute("data-digit") for i in range(2)] == ["1", "7"]
    assert all(float(rows.nth(i).get_attribute("data-p")) > 0.5 for i in range(2))
    boxes = p.locator("#boxes .box")
    assert boxes.count() == 2 and boxes.nth(0).inner_text() == "1" and boxes.nth(1).inner_text() == "7"
    first, second = boxes.nth(0).bounding_box(), boxes.nth(1).bounding_box()
    assert box["x"] <= first["x"] < first["x"] + first["width"] <= box["x"] + box["width"] / 2 + 5
    assert second["x"] >= box["x"] + box["width"] / 2 - 5  # each box over its own digit
    assert not p.locator("#seen").is_visible() and not p.locator("#results .bars").is_visible()
    assert any(u.endswith("/api/read") for u in page.requests)
    assert not any(u.endswith("/api/predict") for u in page.requests)
    # Back to one digit: the square pad, the ten bars and the models chosen.
    p.get_by_role("button", name="Clear").click()
    p.get_by_label("One digit").check()
    page.draw(DIGITS[7])
    page.idle()
    page.check_reads(7, models=len(PAGE_MODELS))


def test_all_models_side_by_side_undo_and_screenshot(page, tmp_path):
    p = page.page
    labels = [t.strip() for t in p.locator("#models label").all_inner_texts()]
    titles = [get_spec(name).title.removeprefix("MNIST-") for name in PAGE_MODELS]
    assert labels == [*titles, ALL_LABEL]
    p.get_by_label(ALL_LABEL).check()
    page.draw(DIGITS[7])
    page.idle()
    before = page.check_reads(7, models=len(PAGE_MODELS))
    assert [c["model"] for c in before] == PAGE_MODELS
    page.draw([[(0.15, 0.9), (0.85, 0.9)]])  # an extra stroke ...
    page.idle()
    p.get_by_role("button", name="Undo").click()  # ... undone: the same picture, the same answers
    page.idle()
    after = page.check_reads(7, models=len(PAGE_MODELS))
    assert [[b["p"] for b in c["bars"]] for c in after] == [[b["p"] for b in c["bars"]] for c in before]
    p.get_by_label("Small", exact=True).check()
    page.idle()
    page.check_reads(7, models=1)
    p.get_by_label(ALL_LABEL).check()
    page.idle()
    page.check_reads(7, models=len(PAGE_MODELS))

    shot = tmp_path / "web-demo.png"
    p.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("TINYDIGITS_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)
    # Undo down to nothing: back to the empty state.
    p.get_by_role("button", name="Undo").click()
    page.idle()
    assert [c["digit"] for c in page.cards()] == ["\u2013"] * len(PAGE_MODELS)


def test_uploading_a_photo(page, mnist, tmp_path):
    p = page.page
    medium = shipped_models()["medium"]
    for index in range(20):  # a photo the model reads right in-process
        photo = tmp_path / f"digit-{index}.jpg"
        on_paper(mnist.test_images[index]).convert("RGB").save(photo, quality=85)
        label = int(mnist.test_labels[index])
        if predict_image(medium, photo).digit == label:
            break
    else:
        pytest.fail("none of the first 20 MNIST test digits, photographed, is read right in-process")
    p.locator("#file").set_input_files(str(photo))
    page.idle()
    page.check_reads(label)
    assert p.locator("#photo").is_visible() and photo.name in p.locator("#message").inner_text()

    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    p.locator("#file").set_input_files(str(bad))
    page.idle()
    assert "not an image" in p.locator("#message").inner_text()
    assert p.locator("#results .digit").inner_text() == "\u2013"
    page.draw(DIGITS[1])  # drawing replaces the photo, and the page carries on
    page.idle()
    page.check_reads(1)
    assert not p.locator("#photo").is_visible()


def test_phone_layout_and_drawing_with_a_finger(browser, live):
    demo = Page(browser, live, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                is_mobile=True, has_touch=True, reduced_motion="reduce")
    try:
        p = demo.page
        assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
        pad = p.locator("#pad").bounding_box()
        results = p.locator("#results").bounding_box()
        assert pad["x"] >= 0 and pad["x"] + pad["width"] <= 390 and pad["width"] > 250
        assert results["y"] > pad["y"] + pad["height"]  # one column: the answer below the pad
        # Real touch input (Pointer Events of type "touch"), through the DevTools protocol.
        cdp = demo.context.new_cdp_session(p)
        for stroke in DIGITS[7]:
            first, *rest = demo.points(stroke)
            cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": first[0],
                                                                                        "y": first[1]}]})
            previous = first
            for point in rest:
                for k in range(1, 7):
                    x = previous[0] + (point[0] - previous[0]) * k / 6
                    y = previous[1] + (point[1] - previous[1]) * k / 6
                    cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                                          "touchPoints": [{"x": x, "y": y}]})
                previous = point
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        demo.idle()
        demo.check_reads(7)
        assert p.evaluate("window.scrollY") == 0  # drawing did not scroll the page
        demo.check_stayed_local()
    finally:
        demo.context.close()
