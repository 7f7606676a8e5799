#!/usr/bin/env python3
"""Differential test of the phone shim against python-phonenumbers.

The filter program named by $PHONE_NORMALISE (tests/tools/phone_normalise)
normalises one number per input line with the daemon's phone_normalise().
This test generates a few thousand inputs from a fixed seed, feeds them to
the filter in one process per default region, and compares each answer with
python-phonenumbers (a port of the same libphonenumber metadata) applying the
same rules as daemon/phone.cc:

  - reject empty input, input over PHONE_INPUT_MAX bytes, and any byte other
    than digits, space, '+', '-', '.', '(', ')' and '/';
  - '+' only as the first character after leading spaces;
  - a leading 00 (after leading spaces) becomes '+';
  - parse with the region (or "ZZ" without one), require a possible number
    without an extension, at most 15 digits, and format as E.164;
  - parse that E.164 form again (region "ZZ") by the same rule until it no
    longer changes (at most 15 rounds), refusing the number if a round
    does: libphonenumber strips one trunk prefix per parse.

Exits 77 (skipped) if the phonenumbers module or $PHONE_NORMALISE is missing.
"""

import os
import random
import subprocess
import sys
import unittest

try:
    import phonenumbers
    from phonenumbers import NumberParseException
    from phonenumbers import PhoneNumberFormat
    from phonenumbers import PhoneNumberType
    IMPORT_ERROR = None
except ImportError as exc:
    phonenumbers = None
    IMPORT_ERROR = str(exc)

SEED = 0x5eed1e
INPUT_MAX = 64
E164_DIGITS = 15
ALLOWED = frozenset(b"0123456789 +-.()/")
SEPARATORS = (" ", "-", ".", "/", " - ", "  ")
# Default regions to run the filter with; None means no region argument.
REGIONS = (None, "US", "GB", "DE", "IT", "FR", "BR", "IN", "JP", "XX")
NUMBER_TYPES = (
    "FIXED_LINE", "MOBILE", "TOLL_FREE", "PREMIUM_RATE", "SHARED_COST",
    "VOIP", "PERSONAL_NUMBER", "PAGER", "UAN", "VOICEMAIL",
)
# Bytes that break an otherwise good number: letters, other punctuation,
# control characters and non-ASCII (UTF-8 and stray Latin-1 bytes).
BAD_BYTES = (
    b"a", b"x", b"E", b"ext", b"#", b"*", b",", b";", b":", b"_", b"~",
    b"[", b"]", b"\t", b"\r", b"\x00", b"\x1b", b"\x7f", b"\xa0", b"\xff",
    "\u00a0".encode(), "\uff14".encode(), "\u0664".encode(),
    "\u2010".encode(), "\ufeff".encode(), "\uff0b".encode(), b"+", b"++",
    b"00",
)
MAX_SHOWN = 20


def parse_e164(text, region):
    """Return text parsed with region and formatted as E.164, or None."""
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException:
        return None
    if number.extension:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    if not e164.startswith("+") or len(e164) - 1 > E164_DIGITS:
        return None
    return e164


def reference(raw, region):
    """Return the E.164 form of raw (bytes) by the shim's rules, or None."""
    if len(raw) == 0 or len(raw) > INPUT_MAX:
        return None
    if any(byte not in ALLOWED for byte in raw):
        return None
    text = raw.lstrip(b" ")
    if not text:
        return None
    if b"+" in text[1:]:
        return None
    if text.startswith(b"00"):
        text = b"+" + text[2:]
    e164 = parse_e164(text.decode("ascii"), region or "ZZ")
    for _ in range(E164_DIGITS):
        if e164 is None:
            return None
        again = parse_e164(e164, "ZZ")
        if again == e164:
            return e164
        e164 = again
    return None


def group(rng, digits):
    """Split digits into chunks joined by one random separator."""
    sep = rng.choice(SEPARATORS)
    chunks = []
    i = 0
    while i < len(digits):
        n = rng.randint(1, 4)
        chunks.append(digits[i:i + n])
        i += n
    return sep.join(chunks)


def spellings(rng, cc, nsn, national):
    """Return ways people write the number +cc nsn."""
    cc = str(cc)
    out = [
        "+%s%s" % (cc, nsn),
        "+%s %s" % (cc, group(rng, nsn)),
        "00%s %s" % (cc, group(rng, nsn)),
        "00%s%s" % (cc, nsn),
        "+%s 0%s" % (cc, group(rng, nsn)),
        "+%s0%s" % (cc, nsn),
        "+%s (0)%s" % (cc, group(rng, nsn)),
        "+%s (%s) %s" % (cc, nsn[:3], group(rng, nsn[3:])),
        "+ %s-%s" % (cc, group(rng, nsn)),
        "  +%s %s  " % (cc, group(rng, nsn)),
        " 00 %s %s" % (cc, group(rng, nsn)),
        "0%s %s" % (cc, group(rng, nsn)),
        "%s %s" % (cc, group(rng, nsn)),
        group(rng, nsn),
        "0" + group(rng, nsn),
        "(0%s) %s" % (nsn[:2], group(rng, nsn[2:])),
        "1 " + group(rng, nsn),
        "011 %s %s" % (cc, group(rng, nsn)),
    ]
    if national:
        out.append(national)
    return out


def example_numbers():
    """Yield (cc, nsn, national format) from the library's examples."""
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for name in NUMBER_TYPES:
            kind = getattr(PhoneNumberType, name)
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            yield (number.country_code,
                   phonenumbers.national_significant_number(number),
                   phonenumbers.format_number(number,
                                              PhoneNumberFormat.NATIONAL))
    for cc in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        number = phonenumbers.example_number_for_non_geo_entity(cc)
        if number is not None:
            yield (cc, phonenumbers.national_significant_number(number),
                   None)


def random_numbers(rng, count):
    """Yield (cc, nsn, None) with random digits of random lengths."""
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    for _ in range(count):
        cc = rng.choice(codes)
        nsn = "".join(rng.choice("0123456789")
                      for _ in range(rng.randint(1, 17)))
        yield (cc, nsn, None)


def mutate(rng, text):
    """Return text (bytes) with one random change."""
    op = rng.randrange(6)
    pos = rng.randint(0, len(text))
    if op == 0:
        return text[:pos] + rng.choice(BAD_BYTES) + text[pos:]
    if op == 1 and text:
        pos = min(pos, len(text) - 1)
        return text[:pos] + text[pos + 1:]
    if op == 2:
        extra = "".join(rng.choice("0123456789")
                        for _ in range(rng.randint(1, 6)))
        return text + extra.encode()
    if op == 3:
        return text[:pos] + b" " * rng.randint(1, 40) + text[pos:]
    if op == 4:
        return text.ljust(rng.choice((INPUT_MAX - 1, INPUT_MAX,
                                      INPUT_MAX + 1)))
    return text[:pos]


def garbage(rng, count):
    """Yield random byte strings, mostly from phone-like characters."""
    alphabet = [bytes([c]) for c in b"0123456789 +-.()/"]
    alphabet += [b"0"] * 6 + [b"+"] * 2 + list(BAD_BYTES)
    for _ in range(count):
        n = rng.choice((0, 1, 2, 3, rng.randint(4, 20), rng.randint(4, 80)))
        yield b"".join(rng.choice(alphabet) for _ in range(n))


def build_corpus():
    """Return the list of test inputs (bytes without newlines)."""
    rng = random.Random(SEED)
    seen = set()
    corpus = []

    def add(item):
        if isinstance(item, str):
            item = item.encode("utf-8")
        item = item.replace(b"\n", b"")
        if item not in seen:
            seen.add(item)
            corpus.append(item)

    spelled = []
    for cc, nsn, national in example_numbers():
        for text in rng.sample(spellings(rng, cc, nsn, national), 4):
            spelled.append(text.encode("utf-8"))
    for cc, nsn, national in random_numbers(rng, 300):
        for text in rng.sample(spellings(rng, cc, nsn, national), 2):
            spelled.append(text.encode("utf-8"))
    for text in spelled:
        add(text)
    for text in rng.sample(spelled, min(len(spelled), 900)):
        add(mutate(rng, text))
    for text in garbage(rng, 600):
        add(text)
    return corpus


def run_filter(program, region, inputs):
    """Run the filter once over inputs and return its output lines."""
    argv = [program] if region is None else [program, region]
    proc = subprocess.run(argv, input=b"".join(x + b"\n" for x in inputs),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=120, check=False)
    if proc.returncode != 0:
        raise AssertionError("%s exited %d: %s" % (
            " ".join(argv), proc.returncode,
            proc.stderr.decode("utf-8", "replace")))
    return proc.stdout.decode("ascii").split("\n")[:-1]


class PhoneOracleTest(unittest.TestCase):
    """Compare the filter with python-phonenumbers on generated input."""

    program = None
    corpus = None

    @classmethod
    def setUpClass(cls):
        cls.program = os.environ["PHONE_NORMALISE"]
        cls.corpus = build_corpus()

    def compare(self, region):
        got = run_filter(self.program, region, self.corpus)
        self.assertEqual(len(got), len(self.corpus),
                         "filter printed %d lines for %d inputs" % (
                             len(got), len(self.corpus)))
        bad = []
        accepted = 0
        for raw, answer in zip(self.corpus, got):
            want = reference(raw, region) or "invalid"
            if want != "invalid":
                accepted += 1
            if answer != want:
                bad.append("  %r: filter %s, phonenumbers %s" % (
                    raw, answer, want))
        if bad:
            self.fail("region %s: %d of %d inputs differ:\n%s" % (
                region, len(bad), len(self.corpus),
                "\n".join(bad[:MAX_SHOWN])))
        # The corpus must exercise both outcomes to mean anything.
        self.assertGreater(accepted, len(self.corpus) // 10)
        self.assertLess(accepted, len(self.corpus) * 9 // 10)

    def test_corpus_size(self):
        self.assertGreater(len(self.corpus), 2000)

    def test_design_examples(self):
        cases = [
            (b"+44 07700 900123", "+447700900123"),
            (b"+447700900123", "+447700900123"),
            (b"+39 06 12345678", "+390612345678"),
            (b"+49 (0)30 1234567", "+49301234567"),
            (b"0049 30 1234567", "+49301234567"),
            (b"+1 (555) 123-4567", "+15551234567"),
            (b"(555) 123-4567", "invalid"),
            (b"+1 800 FLOWERS", "invalid"),
        ]
        got = run_filter(self.program, None, [c[0] for c in cases])
        self.assertEqual(got, [c[1] for c in cases])
        for raw, want in cases:
            self.assertEqual(reference(raw, None) or "invalid", want)


def add_region_tests():
    """Add one test method per default region."""
    for region in REGIONS:
        def test(self, region=region):
            self.compare(region)
        name = "test_region_%s" % (region or "none")
        test.__name__ = name
        test.__doc__ = "Filter agrees with phonenumbers, region %s." % (
            region or "none")
        setattr(PhoneOracleTest, name, test)


add_region_tests()


if __name__ == "__main__":
    if phonenumbers is None:
        print("skip: cannot import phonenumbers (%s)" % IMPORT_ERROR)
        sys.exit(77)
    if not os.environ.get("PHONE_NORMALISE"):
        print("skip: PHONE_NORMALISE is not set to the filter program")
        sys.exit(77)
    unittest.main()
