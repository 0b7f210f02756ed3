"""Text cleaning: Unicode normalisation, HTML removal, control characters, whitespace, dedup.

Cleaning keeps line structure (newlines and leading indentation) because code,
verse and lists depend on it; it only removes what carries no meaning for a
language model.
"""
from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from typing import Iterable

# Only real HTML element names count as tags, so prose such as "a <b and c> d",
# code such as "List<String>" or "x < y > z" survives cleaning.
_BLOCK_TAGS = (
    "address|article|aside|blockquote|body|br|caption|center|dd|details|dialog|div|dl|dt|"
    "fieldset|figcaption|figure|footer|form|h[1-6]|head|header|hr|html|legend|li|main|nav|"
    "ol|option|p|pre|section|summary|table|tbody|td|tfoot|th|thead|title|tr|ul"
)
_INLINE_TAGS = (
    "a|abbr|acronym|audio|b|bdi|bdo|big|button|cite|code|col|colgroup|data|del|dfn|em|embed|"
    "font|i|iframe|img|input|ins|kbd|label|link|mark|meta|meter|noscript|object|optgroup|"
    "output|param|picture|progress|q|rp|rt|ruby|s|samp|select|small|source|span|strike|"
    "strong|sub|sup|svg|textarea|time|track|tt|u|var|video|wbr"
)
_ATTRS = r"""(?:\s+[^<>"'\s/=]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>=`]+))?)*\s*/?"""
_BLOCK_TAG_RE = re.compile(rf"</?(?:{_BLOCK_TAGS}){_ATTRS}>", re.IGNORECASE)
_INLINE_TAG_RE = re.compile(rf"</?(?:{_INLINE_TAGS}){_ATTRS}>", re.IGNORECASE)
_SCRIPT_RE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT_RE = re.compile(r"<!--.*?-->|<!DOCTYPE[^<>]*>", re.DOTALL | re.IGNORECASE)
# Entities are decoded only in their complete ";"-terminated form: html.unescape on its
# own also rewrites bare legacy names, turning the URL "?a=1&para=2" into "?a=1¶=2".
_ENTITY_RE = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")

_LINE_BREAKS = {"\x0b": "\n", "\x0c": "\n", "\x1c": "\n", "\x1d": "\n", "\x1e": "\n", "\x85": "\n",
                "\u2028": "\n", "\u2029": "\n"}
_CONTROL_CHARS = "".join(
    chr(c) for c in list(range(0x00, 0x20)) + list(range(0x7F, 0xA0)) if chr(c) not in "\n\t"
) + "\ufeff"
_TRANSLATE = str.maketrans({**{c: None for c in _CONTROL_CHARS}, **_LINE_BREAKS})

_INNER_SPACE_RE = re.compile(r"(?<=\S)[ \t]+(?=\S)")
_TRAILING_SPACE_RE = re.compile(r"[ \t]+$", re.MULTILINE)
_MANY_BLANK_LINES_RE = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Return ``text`` cleaned for language-model training.

    * HTML: ``<script>``/``<style>`` blocks and comments are removed, tags of real
      HTML elements are stripped (block elements such as ``<p>``/``<br>`` become a
      newline), and complete character references (``&amp;``, ``&#233;``) are decoded;
    * Unicode NFKC: full-width and compatibility forms become their plain form
      (``ＡＢＣ１２３`` -> ``ABC123``, no-break space -> space);
    * control characters are removed except newline and tab; ``\\r\\n``, ``\\r`` and
      Unicode line separators become ``\\n``;
    * whitespace: runs of spaces/tabs between words become one space, trailing
      spaces are removed, two or more blank lines become one, and the text is
      stripped at both ends. Leading indentation is kept.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "<" in text:
        text = _SCRIPT_RE.sub("", text)
        text = _COMMENT_RE.sub("", text)
        text = _BLOCK_TAG_RE.sub("\n", text)
        text = _INLINE_TAG_RE.sub("", text)
    if "&" in text:
        text = _ENTITY_RE.sub(lambda m: html.unescape(m.group(0)), text)
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_TRANSLATE)
    text = _INNER_SPACE_RE.sub(" ", text)
    text = _TRAILING_SPACE_RE.sub("", text)
    text = _MANY_BLANK_LINES_RE.sub("\n\n", text)
    return text.strip("\n").rstrip()


def clean_documents(docs: Iterable[str], *, dedup: bool = True) -> list[str]:
    """Clean every document, drop the empty ones and (by default) exact duplicates.

    Duplicates are detected on the cleaned text, so documents that differ only in
    markup or spacing count as the same; the first occurrence is kept and the
    original order is preserved.
    """
    out: list[str] = []
    seen: set[bytes] = set()
    for doc in docs:
        cleaned = clean_text(doc)
        if not cleaned:
            continue
        if dedup:
            digest = hashlib.blake2b(cleaned.encode("utf-8"), digest_size=16).digest()
            if digest in seen:
                continue
            seen.add(digest)
        out.append(cleaned)
    return out
