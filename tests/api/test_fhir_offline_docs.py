"""Issue 13 part 6: /docs and /redoc work with no internet: every asset a page references is
served by the app itself (they used to load Swagger UI from a CDN and were blank offline)."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest


class _Assets(HTMLParser):
    """Every src/href of a page (scripts, styles, icons)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in {"src", "href"} and value:
                self.urls.append(value)


@pytest.mark.parametrize(("page", "script"), [("/docs", "swagger-ui-bundle.js"),
                                              ("/redoc", "redoc.standalone.js")])
def test_docs_pages_and_their_assets_come_from_the_app(world, page, script):
    r = world.client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(r.text)
    assert any(u.endswith(script) for u in parser.urls), parser.urls
    for url in parser.urls:
        assert not url.startswith(("http:", "https:", "//")), f"{page} loads {url} from outside"
        asset = world.client.get(urljoin(page, url))
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    assert "cdn.jsdelivr" not in r.text and "fonts.googleapis" not in r.text
    # the page's spec is the app's own
    assert world.client.get("/openapi.json").json()["info"]["title"] == "medtwin"


def test_swagger_oauth2_redirect_is_served(world):
    r = world.client.get("/docs/oauth2-redirect")
    assert r.status_code == 200 and "oauth2" in r.text.lower()
