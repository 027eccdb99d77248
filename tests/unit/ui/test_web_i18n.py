"""The web app's English and Korean words."""

from __future__ import annotations

import re

from ui.web_i18n import MESSAGES, language_of, translate


def test_language_follows_accept_language_by_quality() -> None:
    assert language_of("ko-KR,ko;q=0.9,en-US;q=0.8,en;q=0.7") == "ko"
    assert language_of("en-US,en;q=0.9,ko;q=0.8") == "en"
    assert language_of("fr-FR, ko;q=0.5, en;q=0.4") == "ko"
    assert language_of("fr, de") == "en"
    assert language_of("ko;q=0, en;q=0.1") == "en", "q=0 means not acceptable"
    assert language_of("ko;q=oops") == "en"
    assert language_of(None) == language_of("") == "en"


def test_every_key_is_translated_with_the_same_placeholders() -> None:
    assert MESSAGES["en"].keys() == MESSAGES["ko"].keys()
    for key, english in MESSAGES["en"].items():
        korean = MESSAGES["ko"][key]
        assert set(re.findall(r"{(\w+)}", english)) == set(re.findall(r"{(\w+)}", korean)), key
        assert korean != english or key in {"token"}, f"{key} is not translated"


def test_translate_fills_placeholders() -> None:
    assert translate("references", "ko", count=3) == "참고 문헌 (3)"
    assert translate("references", "xx", count=3) == "References (3)"
    assert translate("send") == "Send"
