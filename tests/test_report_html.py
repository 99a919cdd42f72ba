"""``ssdfa report --html`` rendered by a real browser (Debian's chromium, headless).

The page must load without a script or resource error, every embedded figure must decode in the
browser (``HTMLImageElement.decode()``), nothing may come from outside the file, and the
screenshot must not be blank.  CI installs chromium (setup.sh) and sets
``SSDFA_BROWSER_TESTS=required`` (or CI=true, as CI sets) so a missing browser fails instead of skipping.
"""

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess

import matplotlib.image
import pytest

from figdirs import fake_reproduction
from ssdfa import plots
from ssdfa.cli import main
from ssdfa.sweep import run_sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def need_browser():
    if CHROMIUM:
        return CHROMIUM
    if os.environ.get("SSDFA_BROWSER_TESTS") == "required" or os.environ.get("CI"):
        pytest.fail("chromium is not installed (apt-get install chromium); the HTML report test needs it")
    pytest.skip("chromium not installed (apt-get install chromium)")


def chromium(tmp_path, *args, timeout=120):
    cmd = [
        need_browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        "--mute-audio",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    c = root / "C"
    assert (
        main(
            [
                "compare",
                "--methods",
                "bp,dfa",
                "--seeds",
                "2",
                "--dataset",
                "digits",
                "--epochs",
                "2",
                "--limit-train",
                "200",
                "--threads",
                "1",
                "--quiet",
                "--alignment",
                "1",
                "--out-dir",
                str(c),
            ]
        )
        == 0
    )
    r = fake_reproduction(root / "R", {"bp": [0.9, 0.93, 0.95], "dfa": [0.8, 0.86, 0.83]})

    def fake(fields):
        acc = 0.5 + 0.02 * fields["rank"] + 0.01 * fields["seed"]
        return {"final_test_acc": acc, "best_test_acc": acc}

    s = root / "S"
    run_sweep(
        s,
        {"method": "sdfa", "dataset": "digits"},
        [1, 2, 10],
        [0.0, 0.5],
        [0, 1],
        10,
        train=fake,
        log=lambda m: None,
    )
    return [c, r, s]


@pytest.fixture(scope="module")
def page(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "report.html"
    assert main(["report", *map(str, inputs), "--html", "--out", str(out)]) == 0
    return out


def test_page_is_self_contained(page):
    text = page.read_text()
    srcs = re.findall(r'\b(?:src|href)="([^"]*)"', text)
    assert srcs and all(s.startswith("data:") for s in srcs), [s[:40] for s in srcs]
    assert "<script" not in text and "http://" not in text and "https://" not in text
    # compare (curves, 2 angle figures), reproduction (curves, paper vs ours), sweep
    assert len(re.findall(r"<img ", text)) == 6
    for chunk in re.findall(r'src="data:image/png;base64,([^"]+)"', text):
        img = matplotlib.image.imread(io.BytesIO(base64.b64decode(chunk)), format="png")
        assert img.shape[1] == 1100 and img.shape[0] in {h * plots.DPI for _, h in plots.FIGSIZE.values()}


def test_page_holds_tables_settings_commands_and_versions(page, inputs):
    text = html.unescape(re.sub(r"<[^>]+>", " ", page.read_text()))
    assert "dfa-mlp" in text and "gap to BP: paper" in text  # the reproduction's table
    assert re.search(r"dfa\s+2\s+\d+\.\d\d ± \d+\.\d\d", text)  # compare row: seeds, mean ± std
    assert "Settings" in text and "limit_train = 200" in text
    assert "ssdfa compare --methods bp,dfa --seeds 2" in text and f"--out-dir {inputs[0]}" in text
    assert "ssdfa reproduce dfa-mlp --seeds 3 --epochs 2" in text
    assert "ssdfa sweep --method sdfa --dataset digits --rank 1,2,10 --sparsity 0,0.5 --seeds 2" in text
    assert "ssdfa report" in text and "--html" in text
    for lib in ("torch", "numpy", "matplotlib", "python", "platform"):
        assert lib in text


CHECK = """<script>
window.addEventListener("load", function () {
  var r = Array.from(document.images).map(function (img) {
    if (!img.complete || img.naturalWidth === 0) return "fail";
    var c = document.createElement("canvas");  // drawing forces a full decode
    c.width = 220; c.height = Math.max(1, Math.round(220 * img.naturalHeight / img.naturalWidth));
    var g = c.getContext("2d");
    g.drawImage(img, 0, 0, c.width, c.height);
    var d = g.getImageData(0, 0, c.width, c.height).data, dark = 0;
    for (var i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] + d[i + 1] + d[i + 2] < 600) dark++;
    return dark > 50 ? "ok" : "blank";
  });
  document.body.setAttribute("data-check", JSON.stringify({images: r, errors: window.__errors}));
});
</script>"""
TRAP = """<script>window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message || "a resource failed")); }, true);
</script>"""


def browser_check(page_path, tmp_path):
    harness = tmp_path / "harness.html"
    text = page_path.read_text()
    harness.write_text(text.replace("<head>", "<head>" + TRAP, 1).replace("</body>", CHECK + "</body>", 1))
    proc = chromium(tmp_path, "--virtual-time-budget=15000", "--dump-dom", harness.as_uri())
    m = re.search(r'data-check="([^"]*)"', proc.stdout)
    assert m, "the page did not finish loading: " + proc.stdout[-500:]
    return json.loads(html.unescape(m.group(1)))


def screenshot(page_path, tmp_path, height=5000):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--window-size=1280,{height}", f"--screenshot={shot}", page_path.as_uri())
    return shot, matplotlib.image.imread(shot)[..., :3]


def test_browser_loads_page_and_decodes_every_figure(page, tmp_path):
    res = browser_check(page, tmp_path)
    assert res["errors"] == []
    assert res["images"] == ["ok"] * 6


def test_screenshot_is_not_blank(page, tmp_path):
    shot, img = screenshot(page, tmp_path)
    ink = (img < 0.9).any(axis=2).mean()  # text, rules, figure lines
    colour = (img.max(axis=2) - img.min(axis=2) > 0.3).mean()  # rule colours of the figures
    assert ink > 0.02, ink
    assert colour > 0.001, colour
    rows_with_ink = (img < 0.9).any(axis=2).any(axis=1).mean()
    assert rows_with_ink > 0.3, rows_with_ink  # content all the way down, not one line


def test_svg_figures_decode_in_the_browser(inputs, tmp_path):
    out = tmp_path / "svg.html"
    assert main(["report", str(inputs[1]), "--html", "--format", "svg", "--out", str(out)]) == 0
    assert out.read_text().count('src="data:image/svg+xml;base64,') == 2
    assert browser_check(out, tmp_path) == {"images": ["ok", "ok"], "errors": []}


def test_planted_broken_image_is_caught(page, tmp_path):
    """The harness itself can fail: a figure with corrupt bytes does not decode."""
    broken = tmp_path / "broken.html"
    text = page.read_text()
    i = text.index("base64,") + len("base64,")
    broken.write_text(text[:i] + "AAAA" + text[i + 4 :])
    res = browser_check(broken, tmp_path)
    assert res["images"].count("fail") == 1


def test_markdown_report_kept(inputs, tmp_path):
    out = tmp_path / "r" / "report.md"
    assert main(["report", *map(str, inputs), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# ssdfa report")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 6
    for rel in images:
        assert (out.parent / rel).stat().st_size > 5000
    assert "| bp | 2 |" in text and "ssdfa compare --methods bp,dfa" in text
