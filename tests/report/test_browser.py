"""The report in a real headless browser (Debian's Chromium through selenium): what a person sees
on the index and a gallery page, and that the filters and paging work."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fdpipe.bench.report_suite import write_synthetic_output
from fdpipe.report import write_site
from image_files import write_images
from PIL import Image

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="Chromium is not installed: `make browser` installs Debian's chromium and "
    "chromium-driver (as root)",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test extra")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900",
)  # fmt: skip


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browsed")
    images = write_images(root / "images", 5)
    names = [p.relative_to(root / "images").as_posix() for p in images]
    failed = {"img_001.jpg": "cannot identify image file"}
    write_synthetic_output(root / "out", root / "images", names, failed=failed)
    write_site(root / "out", root / "site", images_root=root / "images", page_size=3)
    return root / "site"


@pytest.fixture(scope="module")
def cropped_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``--resize crop`` model's report: 320 x 240 photos, maps over their centre 240 x 240."""
    root = tmp_path_factory.mktemp("cropped")
    images = write_images(root / "images", 2, size=(320, 240))
    names = [p.relative_to(root / "images").as_posix() for p in images]
    write_synthetic_output(
        root / "out", root / "images", names, image_size=(320, 240), map_box=(40, 0, 280, 240)
    )
    write_site(root / "out", root / "site", images_root=root / "images")
    return root / "site"


def visible_paths(browser: webdriver.Chrome) -> list[str]:
    rows = browser.find_elements(By.CSS_SELECTOR, "#gallery tbody tr")
    return [row.get_attribute("data-path") for row in rows if row.is_displayed()]


def test_index_shows_counts_and_failures(browser: webdriver.Chrome, site: Path) -> None:
    browser.get((site / "index.html").as_uri())
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "images 5" in text and "failed 1" in text
    failures = browser.find_element(By.ID, "failures").text
    assert "img_001.jpg" in failures and "cannot identify image file" in failures
    loaded = browser.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    )
    assert loaded  # the plots are inline SVG; nothing on the index fails to load


def test_index_finds_images_across_pages(browser: webdriver.Chrome, site: Path) -> None:
    browser.get((site / "index.html").as_uri())
    find = browser.find_element(By.ID, "find")
    Select(find.find_element(By.NAME, "status")).select_by_value("ok")
    count = WebDriverWait(browser, 5).until(lambda b: b.find_element(By.ID, "found-count"))
    assert count.text == "4 image(s)"  # images.js loaded on first use; the failed one left out
    find.find_element(By.NAME, "file").send_keys("004")
    WebDriverWait(browser, 5).until(
        lambda b: b.find_element(By.ID, "found-count").text == "1 image(s)"
    )
    browser.find_element(By.LINK_TEXT, "img_004.jpg").click()  # on page 2 of 2
    assert browser.current_url.split("#")[0].endswith("page-00002.html")
    assert visible_paths(browser) == ["img_004.jpg"]  # the page opens filtered to it


def test_filters_and_paging(browser: webdriver.Chrome, site: Path) -> None:
    browser.get((site / "page-00001.html").as_uri())
    assert visible_paths(browser) == ["img_000.jpg", "img_001.jpg", "nested/img_002.jpg"]
    assert browser.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    )  # every thumbnail of the page loads (images below the fold too: lazy ones report 0)
    Select(browser.find_element(By.NAME, "status")).select_by_value("failed")
    assert visible_paths(browser) == ["img_001.jpg"]
    assert "1 of 3 rows" in browser.find_element(By.ID, "shown").text
    Select(browser.find_element(By.NAME, "status")).select_by_value("")
    browser.find_element(By.NAME, "file").send_keys("nested")
    assert visible_paths(browser) == ["nested/img_002.jpg"]
    header = browser.find_element(By.CSS_SELECTOR, 'th[data-method="layercam"]')
    browser.find_element(By.CSS_SELECTOR, 'input[name=method][value="layercam"]').click()
    assert not header.is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, 'th[data-method="gradcam"]').is_displayed()
    browser.find_element(By.LINK_TEXT, "next →").click()  # the filters travel in the hash
    assert browser.current_url.split("#")[0].endswith("page-00002.html")
    assert browser.find_element(By.NAME, "file").get_attribute("value") == "nested"
    assert visible_paths(browser) == []  # page 2 holds img_003 and img_004: neither nested
    assert not browser.find_element(By.CSS_SELECTOR, 'th[data-method="layercam"]').is_displayed()
    browser.find_element(By.NAME, "file").clear()
    browser.find_element(By.NAME, "file").send_keys("4")
    assert visible_paths(browser) == ["img_004.jpg"]


def test_cropped_model_overlay_lies_in_the_box_it_saw(
    browser: webdriver.Chrome, cropped_site: Path
) -> None:
    """#19 item 1: the thumbnail is 160 x 120, the box (original pixels 40..280 of 320) lands
    on its columns 20..140: the map shows there and the photo on either side, as rendered."""
    browser.get((cropped_site / "page-00001.html").as_uri())
    row = browser.find_element(By.CSS_SELECTOR, '#gallery tbody tr[data-path="img_000.jpg"]')

    def shown(selector: str) -> np.ndarray:
        image = row.find_element(By.CSS_SELECTOR, f"{selector} img")
        browser.execute_script("arguments[0].scrollIntoView()", image)
        WebDriverWait(browser, 5).until(lambda _: image.get_property("complete"))
        return np.asarray(Image.open(BytesIO(image.screenshot_as_png)).convert("RGB"), float)

    photo, overlay = shown("td.name"), shown('td[data-method="gradcam"]')
    assert photo.shape == overlay.shape == (120, 160, 3)
    change = np.abs(overlay - photo).mean(axis=(0, 2))  # per column
    assert change[:14].max() < 4 and change[146:].max() < 4  # left and right of the box
    assert change[26:134].min() > 10  # the map all across the box
