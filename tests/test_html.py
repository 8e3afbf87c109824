"""The HTML report: one self-contained file, escaped strings, and it renders in a real headless
browser with every embedded image decoded."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.html import render_html
from test_report import make_run, row

CHROMIUM = Path("/usr/bin/chromium")
PROBE = ("<script>window.addEventListener('load',function(){var im=Array.from(document.images);"
         "var bad=im.filter(function(i){return !(i.complete&&i.naturalWidth>0)}).length;"
         "var m=document.createElement('div');m.id='probe';m.textContent='images '+im.length+"
         "' broken '+bad;document.body.appendChild(m);});</script>")


def rows(reason=""):
    out = []
    for n in (256, 512, 1024):
        out.append(row("sdpa", n, time_ms=1e-5 * n * n, mem=n / 100))
        for k in (32, 64):
            out.append(row("linformer", n, time_ms=1e-4 * k * n, mem=k / 10, rel_err=1 / k,
                           params={"k": k}))
    out.append(row("naive", 256, status="error", reason=reason or "boom"))
    return out


def test_html_is_self_contained_with_one_image_per_plot(tmp_path):
    run = make_run(tmp_path / "run", rows(), suite="linformer_table3")  # a suite with grids
    page = render_html(run)
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) >= 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(?!data:)', page)
    for text in ("Crossover against sdpa", "Provenance", "Test CPU", "linformer(k=64)", "Grids"):
        assert text in page


def test_html_escapes_strings_from_the_run(tmp_path):
    evil = "<script>alert(1)</script>\"'&"
    run = make_run(tmp_path / "run", rows(evil), command=f"attnbench run {evil}")
    page = render_html(run, plots=False)
    assert "<script>" not in page and "alert(1)" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;" in page


def chromium_dump(page: Path, tmp_path: Path) -> str:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
           "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium); CI installs it")
def test_html_renders_in_headless_chromium_with_all_images_loaded(tmp_path):
    run = make_run(tmp_path / "run", rows())
    assert main(["report", str(run), "--format", "html", "--out", str(tmp_path / "o")]) == 0
    page = (tmp_path / "o" / "report.html").read_text()
    n_img = page.count("<img ")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = chromium_dump(probe, tmp_path)
    assert f'<div id="probe">images {n_img} broken 0</div>' in dom
    assert "linformer(k=64)" in dom
    # the probe itself can fail: a corrupt data URI is counted as broken
    bad = tmp_path / "bad.html"
    bad.write_text(page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1)
                   .replace("</body>", PROBE + "</body>"))
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert f"images {n_img} broken 1" in chromium_dump(bad, tmp_path)
