"""The playground in a real headless browser (Debian's Chromium, driven by Playwright): fill the
fields, click Generate, see the sentences; the Reconstruct, Interpolate and Score tabs the same
way; and check that the page fetched nothing from outside."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect, sync_playwright
from server_fixtures import client, live_server, train_tiny_run

from server.app import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="module")
def page_base(tmp_path_factory):
    run = train_tiny_run(tmp_path_factory.mktemp("browser") / "tiny")
    with live_server(create_app(run, max_n=16)) as url:
        yield url


@pytest.fixture()
def page(page_base):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pg = browser.new_page()
            pg.set_default_timeout(30_000)
            yield pg
        finally:
            browser.close()


def test_playground_generates_sentences(page, page_base):
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    console_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)

    page.goto(page_base + "/")
    expect(page.locator("#run-info")).to_contain_text("run tiny (step 20)")
    page.fill("#n", "4")
    page.fill("#max_length", "12")
    page.fill("#temperature", "0.8")
    page.fill("#seed", "321")
    page.click("#generate")
    items = page.locator("#sentences li")
    expect(items).to_have_count(4)
    expect(page.locator("#status")).to_contain_text("seed 321")
    shown = items.all_inner_texts()

    # The page shows what the API gives for the same request.
    with client(page_base) as c:
        api = c.post("/generate", json={"n": 4, "max_length": 12, "temperature": 0.8, "top_k": 0, "top_p": 1.0,
                                        "greedy": False, "seed": 321}).json()["sentences"]
    assert shown == [s if s else "(empty sentence)" for s in api]
    assert all(len(s.split()) <= 12 for s in api)

    # Same seed again, same list; then a bad field shows the server's message naming it.
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("seed 321")
    assert items.all_inner_texts() == shown
    page.fill("#top_p", "1.5")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("error 422: top_p:")

    assert requested and all(url.startswith(page_base) for url in requested), requested
    assert failed == [f"422 {page_base}/generate"], failed  # only the deliberate bad request
    assert all("422" in e for e in console_errors), console_errors


def test_playground_latent_tabs(page, page_base):
    """Each latent-space tab: type sentences, press its button, see the server's answer; a bad field
    shows the server's message; only one tab's panel shows at a time."""
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(page_base + "/")
    expect(page.locator("#run-info")).to_contain_text("run tiny (step 20)")
    for hidden in ("#panel-reconstruct", "#panel-interpolate", "#panel-score"):
        expect(page.locator(hidden)).to_be_hidden()
    sentences = ["the cat saw a dog", "a big red car ran quickly"]

    page.click("#tab-reconstruct")
    expect(page.locator("#panel-reconstruct")).to_be_visible()
    expect(page.locator("#panel-generate")).to_be_hidden()
    page.fill("#rec-sentences", "\n".join(sentences) + "\n\n")
    page.fill("#rec-seed", "7")
    page.click("#reconstruct")
    rows = page.locator("#rec-table tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#rec-status")).to_contain_text("seed 7")
    expect(page.locator("#rec-summary")).to_contain_text("from prior samples")
    with client(page_base) as c:
        api = c.post("/reconstruct", json={"sentences": sentences, "chains": 1, "seed": 7}).json()
    shown = [[cell.strip() for cell in rows.nth(i).locator("td").all_inner_texts()] for i in range(2)]
    assert shown == [[s["input"], s["reconstruction"] or "(empty sentence)", f"{s['bleu']:.1f}"]
                     for s in api["sentences"]]
    assert page.locator("#rec-summary").inner_text().startswith(api["comparison"])

    page.click("#tab-interpolate")
    expect(page.locator("#panel-reconstruct")).to_be_hidden()
    page.fill("#int-from", sentences[0])
    page.fill("#int-to", sentences[1])
    page.fill("#int-points", "5")
    page.fill("#int-seed", "3")
    page.click("#interpolate")
    points = page.locator("#int-path li")
    expect(points).to_have_count(5)
    with client(page_base) as c:
        api = c.post("/interpolate", json={"from": sentences[0], "to": sentences[1], "points": 5, "chains": 8,
                                           "max_length": 40, "seed": 3}).json()
    assert points.all_inner_texts() == [f"t={p['t']:.2f} {p['sentence'] or '(empty sentence)'}"
                                        for p in api["points"]]
    page.fill("#int-to", "   ")
    page.click("#interpolate")
    expect(page.locator("#int-status")).to_contain_text("error 422: to: must hold a word")

    page.click("#tab-score")
    page.fill("#score-sentences", "\n".join(sentences))
    page.fill("#score-seed", "1")
    page.click("#score")
    rows = page.locator("#score-table tbody tr")
    expect(rows).to_have_count(2)
    with client(page_base) as c:
        api = c.post("/score", json={"sentences": sentences, "num_chains": 4, "seed": 1}).json()
    shown = [rows.nth(i).locator("td").all_inner_texts() for i in range(2)]
    assert shown == [[f"{s['per_token']:.4f}", f"{s['total']:.3f}", str(s["tokens"]), s["sentence"]]
                     for s in api["scores"]]
    page.fill("#score-chains", "0")
    page.click("#score")
    expect(page.locator("#score-status")).to_contain_text("error 422: num_chains:")
    assert rows.count() == 2  # the last good answer stays

    assert requested and all(url.startswith(page_base) for url in requested), requested
    assert failed == [f"422 {page_base}/interpolate", f"422 {page_base}/score"], failed


def test_api_documentation_renders_offline(page, page_base):
    """/docs draws the operations with Swagger UI served by this server: nothing fetched from outside."""
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(page_base + "/docs")
    operations = page.locator(".opblock-summary-path")
    expect(operations.first).to_be_visible()
    paths = operations.all_inner_texts()
    assert all(any(op in p for p in paths) for op in ("/generate", "/reconstruct", "/interpolate", "/score",
                                                      "/health")), paths
    expect(page.locator(".info .title")).to_contain_text("textebm")
    assert requested and all(url.startswith(page_base) for url in requested), requested
