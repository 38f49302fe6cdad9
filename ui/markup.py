"""User text shown as itself: file names, DICOM-derived warnings, notes, names are data, never markup.

Streamlit renders Markdown (and, in it, emoji shortcodes, material icons and LaTeX) in almost
every text it shows: ``st.markdown``, captions, alerts, widget labels, image captions. A file
named ``**ZZ** [link](https:evil.example).png`` would otherwise show bold text and a working
link, and ``![x](https:127.0.0.1:9).png`` makes the browser fetch that address.
"""

from __future__ import annotations

import re

# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaped, each shows
# as itself. That covers emphasis, links, images, code, headings, HTML, tables, ``$`` (math)
# and ``:`` (shortcodes).
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# GitHub-flavoured Markdown turns bare addresses into links after escapes are resolved, so they
# are broken with an invisible word joiner instead: ``www.``, ``scheme://`` and ``name@host``.
_WORD_JOINER = "\u2060"
_AUTOLINK = re.compile(r"(?i)(www)(?=\.)|(:)(?=/)|(?=@)")


def plain(text: object) -> str:
    """``text`` as Markdown that Streamlit shows as exactly these characters, on one line.

    Control characters (line breaks and tabs included) become spaces, so a name cannot start a
    new paragraph, heading or list; bare web and mail addresses are not made into links.

    Args:
        text: any text (or object, shown by ``str``) that did not come from this code: a file
            name, a message holding a file's own words, a note, a reviewer's name.

    Returns:
        A new string, safe to put anywhere in a Markdown string passed to Streamlit.
    """
    flat = "".join(" " if ord(char) < 32 or ord(char) == 127 else char for char in str(text))
    joined = _AUTOLINK.sub(lambda match: (match.group(1) or match.group(2) or "") + _WORD_JOINER, flat)
    return _PUNCTUATION.sub(r"\\\1", joined)
