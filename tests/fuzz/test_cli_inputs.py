"""Bad input for the `pyxlb` command: a corpus run in the normal test suite.

Every case goes through the real command (click's CliRunner, in-process) against a real
balancer attached to a veth pair in a namespace made by the test, and must keep the
contract of docs/cli.md: **either** success, **or** exit status 2 with exactly one line on
stderr (``pyxlb: error: ...``), nothing on stdout, no exception, and the datapath exactly as
it was (the state `vip list --json` shows, and the apply epoch, which any write moves).
After a case that succeeded, the starting state is put back.

The cases:

- a hand-written corpus of the faults found by fuzzing before (empty input in every form,
  duplicate keys, YAML 1.1 numbers and booleans, ports and weights that are not ASCII
  decimal, addresses and MACs that cannot be right, alias bombs, deep nesting, cycles,
  oversized and non-UTF-8 input, tags, several documents), where each case is also known
  to be right (it must apply: `VALID`) or wrong (it must be refused);
- seeded random mutations of valid state files (truncation, lines dropped, doubled,
  swapped or re-indented, values replaced by awkward ones, bytes inserted or flipped,
  documents spliced together), fed through ``apply -f FILE`` and ``apply -f -``;
- `vip add` and `backend add` with awkward arguments, hand-written (right or wrong as
  `VALID_ARGS` says) and mutated (the contract only).

Environment:

- ``PYXLB_FUZZ_CLI_CASES``: how many random mutations of state files to run (default 400;
  the argument mutations are a quarter of that). The default keeps the module well under
  20 s; `make fuzz` may set thousands.
- ``PYXLB_FUZZ_CLI_SEED``: the seed (default 1729). A failure names the seed and the case,
  so ``PYXLB_FUZZ_CLI_SEED=... PYXLB_FUZZ_CLI_CASES=...`` replays it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import time
import traceback
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pytest
from click.testing import CliRunner

from pyxlb import _bpf, config
from pyxlb.datapath import maps
from pyxlb import netns as namespaces
from pyxlb.cli.root import cli
from pyxlb.datapath import Datapath, map_sizes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "docs" / "examples" / "lb.yaml").read_text()

CASES = int(os.environ.get("PYXLB_FUZZ_CLI_CASES", "400"))
SEED = int(os.environ.get("PYXLB_FUZZ_CLI_SEED", "1729"))
CASE_SECONDS = 10           # no single case may take longer (the limits keep it far below)

V4_VIP, V6_VIP, LOCAL_VIP = "192.0.2.10:80/tcp", "[2001:db8::53]:0/udp", "192.0.2.11:0/tcp"

# valid state files the mutations start from; the first is the starting state
SEEDS = [
    EXAMPLE,
    "vips:\n"
    "  - vip: 192.0.2.10:80/tcp\n"
    "    ring_size: 251\n"
    "    source_ranges: [198.51.100.0/24, 203.0.113.7]\n"
    "    backends:\n"
    "      - 10.0.1.1\n"
    "      - {address: 10.0.1.2, weight: 3, state: draining}\n"
    "      - {address: '2001:db8:1::2', weight: 0}\n"
    "  - vip: 192.0.2.11:0/tcp\n"
    "    mode: local\n"
    "    flow_table: false\n"
    "  - vip: '[2001:db8::53]:53/udp'\n"
    "    mode: l2\n"
    "    affinity: client-ip\n"
    "    backends: [{address: '2001:db8::a', mac: '02:00:00:00:0a:01', local: true}]\n",
    json.dumps({"vips": [{"vip": "192.0.2.10:80/tcp", "mode": "ipip", "flow_table": True,
                          "affinity": "none", "announce": False, "ring_size": 65537,
                          "backends": [{"address": "10.0.1.1", "weight": 1,
                                        "state": "active"}]}]}, indent=2),
    "announce: {mode: l2, node: lb1, l2: {peers: {lb2: 10.0.0.12}, interval: 0.2}}\n"
    "vips: [{vip: 192.0.2.20:53/udp, backends: [10.0.2.1, 10.0.2.2]}]\n",
]


# -- the hand-written corpus ----------------------------------------------------------------

def _bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _vip(vip: str = "192.0.2.40:80/tcp", **fields: str) -> str:
    text = f"vips:\n  - vip: {vip}\n"
    for k, v in fields.items():
        text += f"    {k}: {v}\n"
    return text


def _backend(field: str, value: str) -> str:
    return f"vips:\n  - vip: 192.0.2.40:80/tcp\n    backends:\n      - address: 10.0.1.9\n" \
           f"        {field}: {value}\n"


HAND: List[Tuple[str, bytes]] = [
    # empty, in every form: refused, with or without --allow-empty
    *((f"empty {t!r}", t.encode()) for t in ("", "\n", "  \n\t\n", "# nothing\n", "---\n",
                                             "--- ~\n", "---\n...\n", "~", "null", "...\n")),
    ("{}", b"{}\n"), ("[]", b"[]\n"), ("vips: null", b"vips:\n"), ("vips: []", b"vips: []\n"),
    ("announce only", b"announce: {mode: l2}\n"), ("a string", b"vips"),
    # duplicate keys: the last used to win
    ("second vips", (EXAMPLE + "vips: []\n").encode()),
    ("second mode", _vip(mode="l2").encode() + b"    mode: ipip\n"),
    ("second weight", _backend("weight", "1").encode() + b"        weight: 2\n"),
    ("json duplicate", b'{"vips": [], "vips": [{"vip": "192.0.2.40:80/tcp"}]}'),
    # YAML 1.1 numbers and booleans, digits that are not ASCII
    *((f"weight {v}", _backend("weight", v).encode())
      for v in ("1:30", "0x1F", "0o17", "0b1", "8_0", "+80", "010", ".inf", ".nan", "1e400",
                "８０", "1.5", "-1", "65536", "1e3", "'1'", "true", "~", "[]", "9" * 200)),
    *((f"flag {v}", _vip(flow_table=v).encode())
      for v in ("yes", "no", "on", "off", "y", "N", "1", "'true'", "TRUE", "False", "nul")),
    *((f"ring {v}", _vip(ring_size=v).encode()) for v in ("65537.0", "6_5537", "0x10001",
                                                          "251", "4", "1:1:1")),
    *((f"port {p}", _vip(f"'192.0.2.40:{p}/tcp'").encode())
      for p in ("８０", "8_0", "+80", " 80", "080", "0x50", "99999", "", "-1", "٨٠", "1e2")),
    # addresses and MACs that cannot be right
    *((f"vip {a}", _vip(f"'{a}'").encode())
      for a in ("0.0.0.0:80/tcp", "255.255.255.255:80/tcp", "224.0.0.1:80/udp",
                "127.0.0.1:80/tcp", "[::]:80/tcp", "[::1]:80/tcp", "[ff02::1]:53/udp",
                "[::ffff:127.0.0.1]:80/tcp", "[::ffff:192.0.2.1]:80/tcp",
                "[fe80::1%veth0]:80/tcp", "192.0.2.40:80/sctp", "192.0.2.40/tcp")),
    *((f"backend {a}", _vip(backends=f"['{a}']").encode())
      for a in ("0.0.0.0", "255.255.255.255", "239.0.0.1", "127.0.0.1", "::", "::1",
                "ff05::1", "::ffff:10.0.0.1", "192.0.2.40", "10.0.1.9%veth0", "10.0.1.256")),
    *((f"mac {m}", (f"vips:\n  - vip: '[2001:db8::60]:0/udp'\n    mode: l2\n    backends: "
                    f"[{{address: '2001:db8::61', mac: '{m}'}}]\n").encode())
      for m in ("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01",
                "00:00:00:00:00:00", "0:0:0:0:0:0", "02:00:00:00:00", "zz:00:00:00:00:01")),
    # bounds: aliases, nesting, cycles, size
    ("alias bomb", _bomb().encode()),
    ("alias bomb in vips", ("vips: &v [" + ", ".join(["*v"] * 9) + "]\n").encode()),
    ("wide aliases", ("x: &x [" + ", ".join(["a"] * 1000) + "]\ny: [" +
                      ", ".join(["*x"] * 1100) + "]\n").encode()),
    ("deep flow", b"[" * 3000 + b"]" * 3000),
    ("deep block", "".join(f"{'  ' * i}- \n" for i in range(300)).encode()),
    ("deep mapping", "".join(f"{' ' * i}k:\n" for i in range(300)).encode()),
    ("deep in vips", b"vips: " + b"[" * 40 + b"]" * 40),
    ("cycle", b"vips: &a [*a]\n"),
    ("undefined alias", b"vips: *nothing\n"),
    ("anchor twice", b"vips: &a []\nannounce: &a {mode: l2}\n"),
    ("merge key", (_vip() + "    <<: {mode: l2}\n").encode()),
    ("oversized", b"vips: []\n" + b"#" * (config.MAX_BYTES + 1)),
    ("oversized line", b"vips: [" + b" " * (config.MAX_BYTES + 10) + b"]"),
    # encodings and characters
    ("latin-1", b"vips: [{vip: 192.0.2.40:80/tcp}] # caf\xe9\n"),
    ("utf-16", (EXAMPLE.encode("utf-16"))),
    ("bom", b"\xef\xbb\xbf" + EXAMPLE.encode()),
    ("nul", b"vips: [\x00]\n"), ("escape", b"vips: [\x1b[31m]\n"),
    ("tab indent", b"vips:\n\t- vip: 192.0.2.40:80/tcp\n"),
    ("cr only", EXAMPLE.replace("\n", "\r").encode()),
    ("crlf", EXAMPLE.replace("\n", "\r\n").encode()),
    ("lone surrogate escape", b'vips: ["\\ud800"]\n'),
    # tags and documents
    ("binary tag", b"vips: !!binary AAAA\n"),
    ("python tag", b"vips: !!python/object/apply:os.system [true]\n"),
    ("set tag", b"vips: !!set {a, b}\n"),
    ("local tag", b"vips: !thing []\n"),
    ("two documents", b"vips: []\n---\nvips: []\n"),
    ("document then garbage", EXAMPLE.encode() + b"\n...\ngarbage: [\n"),
    ("complex key", b"? [vips]\n: []\n"),
    ("int key", b"vips: []\n80: x\n"),
    # valid: the success side of the contract
    ("the example", EXAMPLE.encode()),
    ("the example as flow", json.dumps(config.load_text(EXAMPLE).to_dict()).encode()),
]


# the hand-written inputs that are a valid state, which must apply (with --allow-empty,
# for `vips: []`); every other one must be refused
VALID = {"vips: []", "flag TRUE", "flag False", "ring 251", "port 080", "bom", "cr only",
         "crlf", "the example", "the example as flow"}


# -- random mutations -------------------------------------------------------------------------

AWKWARD = ["yes", "no", "on", "off", "1:30", "0x1F", "0o17", "8_0", "+80", "010", ".inf",
           ".nan", "-.inf", "1e308", "1e999", "-1", "0", "65535", "65536", "4294967297",
           "８０", "٣", "~", "null", "''", '""', "[]", "{}", "[[[[", "]]", "&a", "*a", "*x",
           "&a [*a]", "!!binary AAAA", "!!python/none ''", "!!int 0x10", "<<", "? x",
           "0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1", "::", "::1", "ff02::1",
           "::ffff:127.0.0.1", "192.0.2.10", "2001:db8::53", "fe80::1%veth0",
           "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "01:00:5e:00:00:01", "12:34:56:00:00:01",
           "192.0.2.10:８０/tcp", "192.0.2.10:8_0/tcp", "192.0.2.10:+80/tcp",
           "'[::]:80/tcp'", "0.0.0.0:0/udp", "l2", "local", "draining", "client-ip",
           "x" * 300, "|\n  text", ">-\n  text", "'unterminated", '"\\xff"', "#", "- - -",
           "\t", "\x00", "\u202e", "\ufeff"]
SPECIAL = list(":-[]{}&*!|>'\"#%@`,?\t\n\r _+.0123456789") + ["\x00", "\u3000", "８", "\ufeff"]


def _lines(text: str) -> List[str]:
    return text.splitlines(keepends=True) or [""]


def mutate(rng: random.Random, text: str) -> bytes:
    """One to three random edits of a state file, as bytes (some are not UTF-8)."""
    data: Optional[bytes] = None
    for _ in range(rng.randint(1, 3)):
        if data is not None:
            text = data.decode("utf-8", "surrogateescape")
        op = rng.choices(range(11), weights=(1, 1, 2, 1, 1, 3, 3, 1, 1, 1, 1))[0]
        lines = _lines(text)
        i = rng.randrange(len(lines))
        if op == 0:                                          # truncated
            text = text[:rng.randrange(len(text) + 1)]
        elif op == 1:                                        # a line dropped
            del lines[i]
            text = "".join(lines)
        elif op == 2:                                        # a line doubled (keys twice)
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
            text = "".join(lines)
        elif op == 3:                                        # two lines swapped
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif op == 4:                                        # re-indented
            line = lines[i]
            body = line.lstrip(" ")
            lines[i] = " " * max(0, len(line) - len(body) + rng.choice((-4, -2, -1, 1, 2)))
            lines[i] += body
            text = "".join(lines)
        elif op in (5, 6):                                   # a value replaced
            line = lines[i]
            cut = max(line.rfind(": "), line.rfind("- "))
            value = rng.choice(AWKWARD)
            if cut >= 0:
                end = "\n" if line.endswith("\n") else ""
                lines[i] = line[:cut + 2] + value + end
            else:
                lines[i] = value + "\n"
            text = "".join(lines)
        elif op == 7:                                        # characters inserted
            at = rng.randrange(len(text) + 1)
            text = text[:at] + "".join(rng.choice(SPECIAL)
                                       for _ in range(rng.randint(1, 5))) + text[at:]
        elif op == 8:                                        # a bit flipped
            raw = bytearray(text.encode("utf-8", "surrogateescape"))
            if raw:
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            data = bytes(raw)
            continue
        elif op == 9:                                        # spliced with another seed
            other = rng.choice(SEEDS)
            a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
            c, d = sorted(rng.randrange(len(other) + 1) for _ in range(2))
            text = text[:a] + other[c:d] + text[b:]
        else:                                                # documents and nesting
            text = rng.choice([
                "---\n" + text, text + "\n---\n" + text, text + "\n...\n",
                "x: &x " + text.replace("\n", " ") + "\n", "[" * 50 + text + "]" * 50,
                text + "\n" + _bomb(rng.randint(2, 9), rng.randint(2, 12)),
                text.replace("vips:", "vips: &v", 1) + "\nmore: [*v, *v]\n",
            ])
        data = None
    return data if data is not None else text.encode("utf-8", "surrogateescape")


def random_cases(seed: int, n: int) -> List[Tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(f"mutation {i} (seed {seed})", mutate(rng, rng.choice(SEEDS))) for i in range(n)]


# -- vip add / backend add arguments ---------------------------------------------------------

ARG_CASES: List[List[str]] = [
    *(["vip", "add", v] for v in ("0.0.0.0:80/tcp", "255.255.255.255:80/tcp",
                                  "224.0.0.1:80/udp", "127.0.0.1:80/tcp", "[::]:80/tcp",
                                  "[::1]:80/tcp", "[ff02::1]:80/udp", "[::ffff:10.0.0.1]:80/tcp",
                                  "[fe80::1%veth0]:80/tcp", "192.0.2.40:８０/tcp",
                                  "192.0.2.40:8_0/tcp", "192.0.2.40:+80/tcp", "192.0.2.40:1e2/tcp",
                                  "192.0.2.40: 80/tcp", "192.0.2.40:65536/tcp", "192.0.2.40:80",
                                  "192.0.2.40:80/TCP", "192.0.2.40:80/tcp ", "", " ", "\x00",
                                  "192.0.2.40:80/tcp\n", "[192.0.2.40]:80/tcp",
                                  "１９２.0.2.40:80/tcp", "192.0.2.040:80/tcp")),
    *(["vip", "add", "192.0.2.40:80/tcp", "--ring-size", r]
      for r in ("８", "8_9", "+251", "251.0", "0x1f", "-251", "1e3", "nan", "", "2", "4",
                "99999999999999999999999")),
    *(["vip", "add", "192.0.2.40:80/tcp", "--source-range", r]
      for r in ("0.0.0.0/0", "10.0.0.1/8", "::/0", "１０.0.0.0/8", "10.0.0.0/33", "")),
    *(["backend", "add", V4_VIP, a] for a in ("0.0.0.0", "255.255.255.255", "224.0.0.1",
                                              "127.0.0.1", "::", "::1", "ff02::2",
                                              "::ffff:127.0.0.1", "192.0.2.10", "10.0.1.1",
                                              "10.0.1.9%veth0", "１０.0.1.9", "10.0.1.9 ")),
    *(["backend", "add", V4_VIP, "10.0.1.9", "--weight", w]
      for w in ("８０", "8_0", "+80", "1e3", "nan", "inf", "-1", "65536", "0x10", "", " 1",
                "1 ", "1.0", "0", "65535")),
    *(["backend", "add", V6_VIP, "2001:db8::c", "--mac", m]
      for m in ("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:ff:00:00:01",
                "00:00:00:00:00:00", "0-0-0-0-0-0", "02:00:00:00:00:0g", "02:00:00:00:00",
                "０2:00:00:00:00:01", "02:00:00:00:00:0c")),
    ["backend", "add", V6_VIP, "2001:db8::53"], ["backend", "add", LOCAL_VIP, "10.0.1.9"],
]
# the argument cases above that are right, which must succeed; every other one must fail
VALID_ARGS = [
    ["vip", "add", "192.0.2.40:80/TCP"], ["vip", "add", "192.0.2.40:80/tcp "],
    ["vip", "add", "192.0.2.40:80/tcp\n"],             # a VIP is read stripped
    ["vip", "add", "192.0.2.40:80/tcp", "--ring-size", "2"],
    ["vip", "add", "192.0.2.40:80/tcp", "--source-range", "0.0.0.0/0"],
    ["backend", "add", V4_VIP, "10.0.1.9 "],
    ["backend", "add", V4_VIP, "10.0.1.9", "--weight", "0"],
    ["backend", "add", V4_VIP, "10.0.1.9", "--weight", "65535"],
    ["backend", "add", V6_VIP, "2001:db8::c", "--mac", "02:00:00:00:00:0c"],
]


def random_arg_cases(seed: int, n: int) -> List[List[str]]:
    rng = random.Random(seed + 1)
    good = [["vip", "add", "192.0.2.40:80/tcp"], ["backend", "add", V4_VIP, "10.0.1.9"],
            ["backend", "add", V4_VIP, "10.0.1.9", "--weight", "3"],
            ["backend", "add", V6_VIP, "2001:db8::c", "--mac", "02:00:00:00:00:0c"],
            ["vip", "add", "[2001:db8::40]:443/tcp", "--ring-size", "251"]]
    out = []
    for _ in range(n):
        args = list(rng.choice(good))
        k = rng.randrange(2, len(args))
        word = args[k]
        at = rng.randrange(len(word) + 1)
        if rng.random() < 0.5:
            word = word[:at] + rng.choice(SPECIAL) + word[at + 1:]
        else:
            word = word[:at] + rng.choice(AWKWARD) + word[at:]
        args[k] = word.replace("\n", "")
        out.append(args)
    return out


# -- running a case ---------------------------------------------------------------------------

class Target:
    """The balancer the cases run against, its starting state, and the contract check."""

    def __init__(self, ns: str, pin_dir: str):
        self.ns, self.pin_dir = ns, pin_dir
        self.runner = CliRunner()
        self.start = config.load_text(EXAMPLE)
        self.violations: List[str] = []
        self.successes = 0
        self.slowest = (0.0, "")

    def invoke(self, args: Sequence[str], stdin: Optional[bytes] = None):
        return self.runner.invoke(cli, ["--pin-dir", self.pin_dir, "--netns", self.ns,
                                        *args], input=stdin, prog_name="pyxlb")

    def snapshot(self):
        """The state the maps implement and the apply epoch (any write moves it)."""
        with namespaces.enter(self.ns), Datapath.open(self.pin_dir) as dp:
            return dp.current_state().to_dict(), bytes(dp.maps.epoch.lookup(0))

    def reset(self) -> None:
        with namespaces.enter(self.ns), Datapath.open(self.pin_dir) as dp:
            dp.apply(self.start)

    def run(self, name: str, args: Sequence[str], stdin: Optional[bytes] = None,
            before=None, expect: Optional[bool] = None) -> None:
        """One case; `expect`: True, it must succeed; False, it must be refused (either
        way within the contract); None, either."""
        before = before or self.snapshot()
        started = time.monotonic()
        result = self.invoke(args, stdin)
        took = time.monotonic() - started
        self.slowest = max(self.slowest, (took, name))
        shown = f"{name}: pyxlb {' '.join(args)!r}" + \
            (f" <<< {stdin[:120]!r}{'...' if len(stdin) > 120 else ''}" if stdin else "")
        fault = None
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            fault = "raised " + "".join(traceback.format_exception_only(
                type(result.exception), result.exception)).strip()
        elif result.exit_code == 0:
            self.successes += 1
            if self.snapshot()[0] != before[0]:
                self.reset()
        else:
            lines = result.stderr.splitlines()
            if result.exit_code != 2:
                fault = f"exit status {result.exit_code}"
            elif len(lines) != 1 or not lines[0].startswith("pyxlb: error: "):
                fault = f"stderr is not one error line: {result.stderr[:500]!r}"
            elif "Traceback" in result.stderr:
                fault = f"a traceback: {lines[0][:300]!r}"
            elif result.stdout:
                fault = f"stdout on a failure: {result.stdout[:300]!r}"
            elif self.snapshot() != before:
                fault = "the datapath changed"
                self.reset()
        if fault is None and expect is not None and expect != (result.exit_code == 0):
            fault = "accepted, but it is not right" if expect is False else \
                f"refused, but it is right: {result.stderr.strip()!r}"
        if took > CASE_SECONDS:
            fault = (fault + "; " if fault else "") + f"took {took:.1f} s"
        if fault:
            self.violations.append(f"{shown}: {fault}")

    def apply(self, name: str, data: bytes, tmp: Path, flags: Sequence[str] = (),
              expect: Optional[bool] = None) -> None:
        """The input as a file and on stdin."""
        path = tmp / "state.yaml"
        path.write_bytes(data)
        self.run(name, ["apply", "-f", str(path), *flags], expect=expect)
        self.run(name + " (stdin)", ["apply", "-f", "-", *flags], stdin=data, expect=expect)

    def check(self, what: str) -> None:
        shown = "\n".join(self.violations[:25])
        more = len(self.violations) - 25
        assert not self.violations, (
            f"{len(self.violations)} {what} broke the contract (seed {SEED})" +
            (f", the first 25 shown" if more > 0 else "") + f":\n{shown}")


# small maps: reading the state back (before and after every case) walks the arrays whole
SIZES = {**map_sizes(64, 1024, 1024), maps.BACKENDS: 256, maps.BACKEND_STATS: 256,
         maps.NEXTHOPS: 256, maps.MEMBERS: 1024}


@pytest.fixture
def target(netns, bpffs_dir):
    """A balancer on veth0 of a namespace made for the test, serving the example state."""
    subprocess.run(["ip", "-n", netns, "addr", "add", "10.99.0.1/24", "dev", "veth0"],
                   check=True)
    pin_dir = os.path.join(bpffs_dir, "lb")
    t = Target(netns, pin_dir)
    try:
        with namespaces.enter(netns):
            Datapath.create(pin_dir, map_sizes=SIZES).close()
        result = t.invoke(["attach", "veth0"])          # adopts it
        assert result.exit_code == 0, result.output
        t.invoke(["vip", "add", LOCAL_VIP, "--mode", "local"])
        t.reset()
        yield t
    finally:
        with contextlib.suppress(Exception), namespaces.enter(netns), \
                Datapath.open(pin_dir) as dp:
            for i in dp.interfaces():
                _bpf.XdpLink.current(i["ifindex"], i["mode"]).detach()
            dp.destroy()


def test_hand_written_corpus(target, tmp_path):
    """Each case with each of no flag, --allow-empty and --dry-run: the valid ones apply
    (`vips: []` only with --allow-empty), the others are refused, within the contract."""
    for name, data in HAND:
        for flags in ((), ("--allow-empty",), ("--dry-run",)):
            ok = name in VALID and (name != "vips: []" or "--allow-empty" in flags)
            target.apply(f"{name} {' '.join(flags)}".strip(), data, tmp_path, flags, ok)
    target.check("hand-written inputs")


def test_random_mutations_of_state_files(target, tmp_path):
    rng = random.Random(SEED)
    for name, data in random_cases(SEED, CASES):
        flags = rng.choice(((), (), ("--dry-run",), ("--allow-empty",)))
        if rng.random() < 0.7:
            path = tmp_path / "state.yaml"
            path.write_bytes(data)
            target.run(name, ["apply", "-f", str(path), *flags])
        else:
            target.run(name + " (stdin)", ["apply", "-f", "-", *flags], stdin=data)
    target.check("mutated state files")


def test_vip_and_backend_arguments(target):
    for args in ARG_CASES:
        target.run("arguments", args, expect=args in VALID_ARGS)
    for args in random_arg_cases(SEED, max(1, CASES // 4)):
        target.run("mutated arguments", args)
    target.check("argument forms")


def test_the_corpus_covers_the_faults_found():
    """Every fault of the fuzzing pass has a case here (if one is dropped, say why)."""
    names = " ".join(name for name, _ in HAND)
    for needed in ("empty ''", "empty '# nothing\\n'", "empty '---\\n'", "empty '~'",
                   "second vips", "weight 1:30", "port ８０", "port 8_0", "port +80",
                   "vip 0.0.0.0", "vip 255.255.255.255", "vip 224.0.0.1", "vip [::]",
                   "vip 127.0.0.1", "backend 0.0.0.0", "backend 255.255.255.255",
                   "backend 239.0.0.1", "backend 127.0.0.1", "backend 192.0.2.40",
                   "mac ff:ff:ff:ff:ff:ff", "mac 01:00:5e", "mac 00:00:00:00:00:00",
                   "deep flow", "alias bomb", "oversized"):
        assert needed in names, needed
