"""``source.kind: gallery``: a logged-in, paginated HTML gallery (a photo-frame service).

Configured in the job spec alone, no code per site::

    source:
      kind: gallery
      login:                                   # optional
        url: http://host/                      # form POST target
        fields: {username: alice}              # plain form fields
        secret_fields: {password: {env: KODAK_PASSWORD}}   # or {block: <Prefect Secret block>}
      pages:
        url: "http://host/Frame/AllPictures?p={page}"
        first: 1
        last_when_fewer_than: 48               # also stops on an empty or a repeated page
      images:
        css: "img"                             # CSS selector of the elements
        attribute: src                         # attribute holding the URL (data-src...)
        contains: "~t~"                        # keep only URLs containing this
        rewrite: [{from: "~t~", to: "~a~"}]    # thumbnail URL -> original URL, in order
      expected_count: 1374                     # the report says whether it was met
      http: {per_host: 4, rate_per_host: 5}    # optional politeness (tasks.download.HttpSettings)

The login session (cookies) is reused for every page; a page that comes back as the
login form (the session expired: redirected to ``login.url``, or a password field on
the page) logs in again and asks for the same page. Image URLs are resolved against
their page; images on another host (a CDN) are fetched without cookies, images on
the gallery's own host with the logged-in session. A page's image count for
``last_when_fewer_than`` is the number of URLs kept (after ``contains``).
"""

from __future__ import annotations

import re
import threading
from typing import Any, Iterator, Literal
from urllib.parse import urljoin, urlsplit

import requests
from parsel import Selector
from pydantic import BaseModel, ConfigDict, Field, field_validator

from photo_escape.outcomes import PermanentError, TransientError
from photo_escape.plugins import KindConfig, Source
from photo_escape.secrets import SecretRef, redact, resolve
from tasks.download import Downloader, HttpSettings, NameBook, make_session, network_reason, status_error

MAX_RELOGINS = 3


class LoginConfig(BaseModel):
    """A login form: where it posts, its plain fields and its secret fields."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="the form's POST target")
    fields: dict[str, str] = Field(default_factory=dict, description="plain form fields")
    secret_fields: dict[str, SecretRef] = Field(
        default_factory=dict, description="form fields read from {env: VAR} or {block: prefect-secret-block}")
    login_form: str = Field("input[type=password]",
                            description="CSS selector found only on the login page (tells an expired session)")
    hidden_fields: bool = Field(True, description="first read the form's hidden inputs (CSRF tokens) and send them too")
    form_url: str | None = Field(None, description="page showing the login form, when it is not login.url")


class PagesConfig(BaseModel):
    """The album's pages: a URL template and when to stop."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="page URL with {page} where the page number goes")
    first: int = Field(1, description="number of the first page")
    last_when_fewer_than: int | None = Field(None, ge=1, description="a page with fewer images is the last")
    max_pages: int = Field(100_000, ge=1, description="never ask for more pages than this")
    confirm_empty: int = Field(2, ge=0, le=10, description="ask again this many times (with backoff) before "
                                                          "believing a page is empty: an error page served "
                                                          "with status 200 looks empty too")

    @field_validator("url")
    @classmethod
    def _has_page(cls, v: str) -> str:
        if "{page}" not in v:
            raise ValueError("must contain {page} where the page number goes, e.g. http://host/album?p={page}")
        return v


class Rewrite(BaseModel):
    """Replace ``from`` by ``to`` in an image URL (a regular expression with ``regex: true``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from", min_length=1)
    to: str = ""
    regex: bool = False

    def apply(self, url: str) -> str:
        return re.sub(self.from_, self.to, url) if self.regex else url.replace(self.from_, self.to)


class ImagesConfig(BaseModel):
    """Which elements of a page name images, and how a found URL becomes the original's."""

    model_config = ConfigDict(extra="forbid")
    css: str = Field("img", description="CSS selector of the elements")
    attribute: str = Field("src", description="attribute holding the URL (src, data-src, href; srcset: the "
                                              "largest; style: its url(...))")
    contains: str | None = Field(None, description="keep only URLs containing this text")
    rewrite: list[Rewrite] = Field(default_factory=list, description="applied in order to each kept URL")
    cookies: Literal["same_host", "always", "never"] = Field(
        "same_host", description="send the login cookies with image requests: only to the gallery's own host, "
                                 "to any host the cookies are for, or never")


class GallerySourceConfig(KindConfig):
    kind: Literal["gallery"]
    login: LoginConfig | None = None
    pages: PagesConfig
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    expected_count: int | None = Field(None, ge=0, description="how many images the gallery should have")
    http: HttpSettings = Field(default_factory=HttpSettings)


class LoginFailed(PermanentError):
    def __init__(self, message: str) -> None:
        super().__init__("login_failed", message)


_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+?)['"]?\s*\)""")


def url_from_attribute(value: str, attribute: str) -> str:
    """The image URL an attribute's value holds: itself for ``src``/``href``/``data-*``,
    the largest candidate of a ``srcset``, the ``url(...)`` of a ``style``."""
    value = value.strip()
    if attribute.lower().endswith("srcset"):
        best, best_size = "", -1.0
        for candidate in value.split(","):
            parts = candidate.split()
            if not parts:
                continue
            size = 1.0
            if len(parts) > 1 and re.fullmatch(r"\d+(\.\d+)?[wx]", parts[1]):
                size = float(parts[1][:-1])
            if size >= best_size:
                best, best_size = parts[0], size
        return best
    m = _CSS_URL.search(value)
    return m.group(1).strip() if m else value


def _same_place(a: str, b: str) -> bool:
    """Whether two URLs name the same page (scheme, host, port and path; query ignored)."""
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.netloc.lower(), pa.path.rstrip("/")) == (pb.scheme, pb.netloc.lower(), pb.path.rstrip("/"))


class GallerySource(Source):
    kind = "gallery"
    Config = GallerySourceConfig

    def __init__(self, config: GallerySourceConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.config: GallerySourceConfig = config
        self.downloader = Downloader.from_options(config.http, self.options)
        self.site = make_session(config.http, pool=self.downloader.concurrency, cookies=True)
        self._login_lock = threading.Lock()
        self._logged_in = False
        self.logins = 0
        self.facts: dict[str, Any] = {"expected_count": config.expected_count}

    # -- logging in ---------------------------------------------------------------------
    def login(self) -> None:
        """Post the login form (secrets resolved now, never stored) and check it worked."""
        cfg = self.config.login
        if cfg is None:
            return
        form = self._hidden_fields() if cfg.hidden_fields else {}
        form.update(cfg.fields)
        for field, ref in cfg.secret_fields.items():
            form[field] = resolve(ref)

        def post() -> requests.Response:
            try:
                with self.downloader.gate.slot(cfg.url):
                    resp = self.site.post(cfg.url, data=form, timeout=self.downloader.timeout)
            except requests.exceptions.RequestException as exc:
                raise TransientError(network_reason(exc), redact(str(exc))) from None
            err = status_error(resp)
            if err is not None:
                raise err
            return resp

        resp = self.downloader.retrying(post, [])
        if self._shows_login_form(resp):
            raise LoginFailed(f"login at {cfg.url} failed: the site still shows its login form "
                              "(check login.fields and the secret's value)")
        self.logins += 1
        self._logged_in = True

    def _hidden_fields(self) -> dict[str, str]:
        """The login form's hidden inputs (CSRF tokens and the like), read as a browser
        would before posting; nothing when the form page cannot be read."""
        cfg = self.config.login
        assert cfg is not None
        try:
            resp = self.downloader.get_page(cfg.form_url or cfg.url, session=self.site)
        except (PermanentError, TransientError):
            return {}
        sel = Selector(text=resp.text)
        forms = [f for f in sel.css("form") if f.css(cfg.login_form)] or sel.css("form")[:1]
        if not forms:
            return {}
        return {el.attrib["name"]: el.attrib.get("value", "")
                for el in forms[0].css("input[type=hidden]") if el.attrib.get("name")}

    def _shows_login_form(self, resp: requests.Response) -> bool:
        ctype = resp.headers.get("Content-Type", "")
        if ctype and "html" not in ctype:
            return False
        return bool(Selector(text=resp.text).css(self.config.login.login_form))  # type: ignore[union-attr]

    def _is_login_page(self, resp: requests.Response) -> bool:
        """Whether a page came back as the login page (the session is gone or never was):
        redirected to the login URL, or showing the login form."""
        cfg = self.config.login
        if cfg is None:
            return False
        if resp.history and _same_place(resp.url, cfg.url) and not _same_place(resp.url, self.config.pages.url):
            return True
        return self._shows_login_form(resp)

    def _ensure_login(self) -> None:
        with self._login_lock:
            if not self._logged_in:
                self.login()

    # -- listing ------------------------------------------------------------------------
    def page_url(self, page: int) -> str:
        return self.config.pages.url.replace("{page}", str(page))

    def get_page(self, url: str) -> requests.Response | None:
        """One album page, logged in; None when the site says there is no such page (404)."""
        self._ensure_login()
        for _ in range(MAX_RELOGINS + 1):
            try:
                resp = self.downloader.get_page(url, session=self.site)
            except PermanentError as exc:
                if exc.reason == "not_found":
                    return None
                if not (self.config.login and exc.reason in ("http_401", "http_403")):
                    raise
                resp = None  # some sites answer an expired session with 401/403
            if resp is not None and not self._is_login_page(resp):
                return resp
            with self._login_lock:  # the session expired: log in again, ask again
                self.facts["relogins"] = self.facts.get("relogins", 0) + 1
                self.login()
        raise LoginFailed(f"{url} keeps showing the login form after {MAX_RELOGINS} fresh logins")

    def image_urls(self, resp: requests.Response) -> list[str]:
        """The absolute image URLs a page names (selector + attribute, ``contains`` kept)."""
        cfg = self.config.images
        sel = Selector(text=resp.text, base_url=resp.url)
        base = sel.css("base::attr(href)").get()
        base_url = urljoin(resp.url, base) if base else resp.url
        urls = []
        for el in sel.css(cfg.css):
            value = url_from_attribute(el.attrib.get(cfg.attribute) or "", cfg.attribute)
            if not value or value.startswith(("data:", "javascript:", "#")):
                continue
            url = urljoin(base_url, value)
            if urlsplit(url).scheme not in ("http", "https"):
                continue
            if cfg.contains and cfg.contains not in url:
                continue
            urls.append(url)
        return urls

    def _confirm_empty(self, url: str) -> list[str]:
        """Ask for an empty-looking page again (``pages.confirm_empty`` times, with
        backoff, logging in afresh first: some sites show an empty album to an expired
        session); its image URLs if it turns out not to be empty after all."""
        for attempt in range(self.config.pages.confirm_empty):
            self.downloader.sleep(self.downloader.backoff_seconds * 2 ** attempt)
            if attempt == 0 and self.config.login is not None:
                with self._login_lock:
                    self.login()
            resp = self.get_page(url)
            found = self.image_urls(resp) if resp is not None else []
            if found:
                self.facts["empty_pages_retried"] = self.facts.get("empty_pages_retried", 0) + 1
                return found
        return []

    def original(self, url: str) -> str:
        """A found URL rewritten into the original's URL (the rules, in order)."""
        for rule in self.config.images.rewrite:
            url = rule.apply(url)
        return url

    def list_pages(self) -> Iterator[list[dict]]:
        """Each page's images as the album is walked, until a stop rule ends it."""
        pages = self.config.pages
        seen: set[str] = set()
        seen_pages: set[tuple[str, ...]] = set()
        names = NameBook()
        ended = "max_pages"
        page = pages.first
        for page in range(pages.first, pages.first + pages.max_pages):
            url = self.page_url(page)
            resp = self.get_page(url)
            if resp is None:
                if page == pages.first:
                    raise PermanentError("not_found", f"the first page {url} answered 404: check pages.url "
                                                      "and pages.first")
                ended = "page_not_found"
                break
            found = self.image_urls(resp)
            if not found:
                found = self._confirm_empty(url)
            if not found:
                if page == pages.first:
                    self.facts["warning"] = ("the first page had no image URLs: check images.css, "
                                             "images.attribute and images.contains against the page's HTML")
                ended = "empty_page"
                break
            signature = tuple(found)
            if signature in seen_pages:
                ended = "repeated_page"
                break
            seen_pages.add(signature)
            items = []
            for thumb in found:
                orig = self.original(thumb)
                if orig in seen:
                    continue
                seen.add(orig)
                items.append({"item_id": orig, "source_ref": orig, "name": names.name_for(orig),
                              "url": orig, "thumbnail": thumb, "page": page})
            self.facts["pages"] = page - pages.first + 1
            if not items:
                ended = "repeated_page"
                break
            yield items
            if pages.last_when_fewer_than and len(found) < pages.last_when_fewer_than:
                ended = "fewer_than_" + str(pages.last_when_fewer_than)
                break
        self.facts.update(listing_ended=ended, last_page=page, listed_images=len(seen))

    # -- fetching -----------------------------------------------------------------------
    def _session_for(self, url: str) -> requests.Session:
        """By default cookies go only to the gallery's own host; a CDN gets a cookieless session."""
        mode = self.config.images.cookies
        same_host = urlsplit(url).netloc.lower() == urlsplit(self.config.pages.url).netloc.lower()
        if self.config.login and (mode == "always" or (mode == "same_host" and same_host)):
            self._ensure_login()
            return self.site
        return self.downloader.session

    def fetch(self, items: list[dict]) -> list[dict]:
        """Download a batch of originals into the work folder (one outcome each)."""
        return self.downloader.fetch_items(items, self.workdir / "gallery", session_for=self._session_for)

    def report_facts(self) -> dict[str, Any]:
        return {k: v for k, v in self.facts.items() if v is not None or k == "expected_count"}

    def close(self) -> None:
        self.site.close()
        self.downloader.close()
