"""A prompt's text cut into chained page hashes, as a runtime's radix cache pages tokens.

A runtime's radix cache holds a prompt's tokens in pages; a page is reusable only with
every page before it. The gateway has no tokenizer, so it pages the prompt's text instead:
``page_chars`` bytes of UTF-8 per page (about ``page_chars / 4`` tokens). Page i's hash
covers the whole text up to the end of page i (a running CRC-32 and Adler-32, 64 bits),
so equal hashes mean equal prefixes, and every process and replica computes the same ones.
"""

import zlib


def page_hashes(text: str, page_chars: int, max_pages: int) -> list[int]:
    """The chained hash of each whole page of text (at most ``max_pages``)."""
    data = memoryview(text.encode("utf-8", "surrogatepass"))
    count = min(len(data) // page_chars, max_pages)
    crc, adler, hashes = 0, 1, []
    crc32, adler32 = zlib.crc32, zlib.adler32
    for start in range(0, count * page_chars, page_chars):
        page = data[start:start + page_chars]
        crc, adler = crc32(page, crc), adler32(page, adler)
        hashes.append(crc << 32 | adler)
    return hashes
