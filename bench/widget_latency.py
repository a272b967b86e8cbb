"""Benchmark (not a test): how long the latent explorer takes from a slider input to a new image.

Serves a built site on localhost, opens the explorer chapter in headless Chromium and, inside the
page, moves one slider of the 20-dimensional explorer many times, timing with performance.now():

- *input to drawn*: dispatching the input event until the handler has decoded z and written the
  canvas pixels (the forward pass plus drawing; the explorer draws synchronously);
- *input to next frame*: until the next requestAnimationFrame callback, the earliest the browser
  can show the new pixels; it includes waiting for the display's next frame (up to ~16.7 ms at 60 Hz).

The goal is <= 16 ms for input-to-drawn: the new image fits within one 60 Hz frame.

    python bench/widget_latency.py [--site _build/test-site/_build/html] [--n 300]

Build the site first (`make book-smoke`, or run the browser tests, which build _build/test-site).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

# Run as a script from anywhere: the repository root holds tools/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.serve import serve_directory  # noqa: E402

GOAL_MS = 16.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

MEASURE = """async ([n, dim]) => {
  const root = Array.from(document.querySelectorAll('.vle')).find(r => r.querySelectorAll('input.vle-slider').length === 20);
  const slider = root.querySelectorAll('input.vle-slider')[dim];
  const nextFrame = () => new Promise(resolve => requestAnimationFrame(resolve));
  const drawn = [], framed = [];
  for (let i = 0; i < n; i++) {
    await nextFrame();  // start each input at the beginning of a frame, as a user's would
    const value = (-3 + 6 * ((i * 0.618034) % 1)).toFixed(2);
    const t0 = performance.now();
    slider.value = value;
    slider.dispatchEvent(new Event('input', {bubbles: true}));
    drawn.push(performance.now() - t0);
    await nextFrame();
    framed.push(performance.now() - t0);
  }
  return {drawn, framed};
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=Path("_build/html"),
                        help="the built site's html directory")
    parser.add_argument("--page", default="book/latent_explorer.html")
    parser.add_argument("--n", type=int, default=300, help="slider inputs to time")
    args = parser.parse_args()
    if not (args.site / args.page).is_file():
        sys.exit(f"{args.site / args.page} not found: build the site first (make book)")

    from playwright.sync_api import sync_playwright

    with serve_directory(args.site) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url + args.page, wait_until="networkidle")
            page.wait_for_function("document.querySelectorAll('.vle[data-ready=\"true\"]').length >= 2")
            page.evaluate(MEASURE, [20, 0])  # warm-up: JIT compilation of the forward pass
            result = page.evaluate(MEASURE, [args.n, 0])
            browser.close()

    for name, times in [("input to drawn", result["drawn"]), ("input to next frame", result["framed"])]:
        q = statistics.quantiles(times, n=20)
        print(f"{name:20s}: median {statistics.median(times):6.2f} ms, 95th percentile {q[-1]:6.2f} ms "
              f"over {len(times)} inputs")
    median = statistics.median(result["drawn"])
    print(f"goal: input to drawn <= {GOAL_MS:.0f} ms (one 60 Hz frame): "
          f"{'met' if median <= GOAL_MS else 'NOT met'} ({median:.2f} ms, z_dim = 20, decoder 20-400-784)")


if __name__ == "__main__":
    main()
