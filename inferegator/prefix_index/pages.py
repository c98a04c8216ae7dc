"""A prompt's text cut into chained page hashes, as a runtime's radix cache pages tokens.

A runtime's radix cache holds a prompt's tokens in pages; a page is reusable only with
every page before it. The gateway has no tokenizer, so it pages the prompt's text instead:
``page_chars`` bytes of UTF-8 per page (about ``page_chars / 4`` tokens), the first page
cut four times on the way (at 1/16, 1/8, 1/4 and 1/2 of it) so that a short prompt, a
conversation's first turn, still has cuts its next turn can find. Cut i's hash covers the
whole text up to cut i (a running CRC-32 and Adler-32, 64 bits), so equal hashes mean
equal prefixes, and every process and replica computes the same ones.

A conversation's next turn adds less than a page as often as not, so besides the cuts a
prompt has two ``Ends``: the hash of its whole text, recorded with its pages, and the
hash of the text up to where the previous turn's prompt ended, looked up with them: the
runtime that served the previous turn is known to the byte.
"""

import zlib
from typing import NamedTuple

SMALL_CUTS = 4  # cuts inside the first page (route.lua knows them too)


def cut_offsets(page_chars: int):
    """Where the text is cut, in bytes: 16, 32, 64, 128, then 256, 512, ... for 256."""
    for i in range(SMALL_CUTS):
        yield page_chars >> (SMALL_CUTS - i)
    offset = 0
    while True:
        offset += page_chars
        yield offset


def covered_chars(held: int, page_chars: int) -> int:
    """The bytes of text that the first ``held`` cuts cover."""
    if held <= SMALL_CUTS:
        return page_chars >> (SMALL_CUTS + 1 - held) if held else 0
    return page_chars * (held - SMALL_CUTS)


def cuts_within(size: int, page_chars: int) -> int:
    """How many cuts a text of ``size`` bytes reaches: the leading hashes of any longer
    text that starts with it are its own."""
    cuts = 0
    for cut in cut_offsets(page_chars):
        if cut > size:
            return cuts
        cuts += 1


def first_page_hash(hashes: list[int]) -> int:
    """The hash at the end of the first whole page, else at the last cut there is (a
    prompt shorter than a page); ``hashes`` from page_hashes, not empty."""
    return hashes[min(len(hashes), SMALL_CUTS + 1) - 1]


def page_hashes(text: str, page_chars: int, max_pages: int) -> list[int]:
    """The chained hash of the text at each cut it reaches (at most ``max_pages``)."""
    return prompt_pages(text, page_chars, max_pages, 0)[0]

class Ends(NamedTuple):
    """A prompt's hash at its own end, and at the end of the previous turn's prompt."""

    own: int
    previous: int  # 0: no previous turn
    previous_chars: int  # where it ended, in bytes


def prompt_pages(text: str, page_chars: int, max_pages: int,
                 previous_chars: int) -> tuple[list[int], Ends]:
    """The text's page hashes (as page_hashes) and its Ends, the first ``previous_chars``
    bytes being the previous turn's prompt (0: none), in one pass: the ends continue the
    running hash from the cut before them."""
    data = memoryview(text.encode("utf-8", "surrogatepass"))
    size, start = len(data), 0
    crc, adler, hashes = 0, 1, []
    crc32, adler32 = zlib.crc32, zlib.adler32
    wanted = previous_chars if 0 < previous_chars < size else 0
    previous = 0
    for cut in cut_offsets(page_chars):
        if cut > size or len(hashes) >= max_pages:
            break
        if start < wanted <= cut:
            part = data[start:wanted]
            previous = crc32(part, crc) << 32 | adler32(part, adler)
        page = data[start:cut]
        crc, adler = crc32(page, crc), adler32(page, adler)
        hashes.append(crc << 32 | adler)
        start = cut
    if wanted > start:  # past the last cut
        part = data[start:wanted]
        previous = crc32(part, crc) << 32 | adler32(part, adler)
    rest = data[start:]
    own = crc32(rest, crc) << 32 | adler32(rest, adler)
    return hashes, Ends(own, previous, wanted)
