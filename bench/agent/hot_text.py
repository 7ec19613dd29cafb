"""Hot text (bench/README.md, "Hot text"): the symbol order build.rs links
the tracemesh binary in, and a check of how a binary lays it out.

  python3 hot_text.py order PROFILE BINARY > hot-text.order
      PROFILE: a callgrind profile of the agent under load, written with
      --demangle=no (instructions.sh PROFILE_DIR=...). Prints every function
      that ran in it and that BINARY defines in its text, hottest (own
      instructions) first, as LLD's --symbol-ordering-file reads them.

  python3 hot_text.py check ORDER BINARY
      How many of ORDER's names BINARY defines, the bytes they take and the
      4 KiB pages they span: laid out in the order, the pages are about the
      bytes over 4 KiB; in the compiler's order, several times that.
"""

import re
import subprocess
import sys

HEADER = """\
# Hot text: the functions the agent runs per proxied request, hottest first,
# for LLD's --symbol-ordering-file (build.rs). Written by
# bench/agent/hot_text.sh from a callgrind profile of the cost bench's agent
# (one worker, every request traced, metrics on); rerun it after a toolchain
# or dependency update: the names carry each crate's hash.
"""


def toolchain():
    """The header's line naming the rustc the names were made with."""
    version = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout
    return f"# Made with {version.strip() or 'an unknown rustc'}, x86_64-unknown-linux-gnu.\n"


def text_symbols(binary):
    """Name -> list of (address, size) of the functions BINARY defines."""
    out = subprocess.run(
        ["nm", "-S", "--defined-only", binary], check=True, capture_output=True, text=True
    ).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in ("t", "T"):
            symbols.setdefault(parts[3], []).append((int(parts[0], 16), int(parts[1], 16)))
    return symbols


def own_instructions(profile):
    """Function name -> instructions it ran itself, from a callgrind file
    (compressed names: `fn=(id) name` once, then `fn=(id)`)."""
    names, cost = {}, {}
    current = None
    in_call = False
    name_line = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")
    for line in open(profile, errors="replace"):
        line = line.rstrip("\n")
        m = name_line.match(line)
        if m:
            ident, name = m.groups()
            if name:
                names[ident] = name
            if line.startswith("fn="):
                current = ident
            continue
        if line.startswith("calls="):
            in_call = True  # the next cost line is the callee's, inclusive
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            if in_call:
                in_call = False
                continue
            fields = line.split()
            if current is not None and len(fields) >= 2 and fields[1].isdigit():
                cost[current] = cost.get(current, 0) + int(fields[1])
    return {names[i]: c for i, c in cost.items() if c > 0 and i in names}


def order(profile, binary):
    symbols = text_symbols(binary)
    ran = own_instructions(profile)
    hot = sorted((n for n in ran if n in symbols), key=lambda n: -ran[n])
    sys.stdout.write(HEADER + toolchain())
    for name in hot:
        print(name)


def check(order_file, binary):
    symbols = text_symbols(binary)
    names = [
        line.strip() for line in open(order_file) if line.strip() and not line.startswith("#")
    ]
    found = [n for n in names if n in symbols]
    size, pages = 0, set()
    for name in found:
        for address, length in symbols[name]:
            size += length
            pages.update(range(address // 4096, (address + max(length, 1) - 1) // 4096 + 1))
    print(
        f"{len(found)} of {len(names)} functions defined, {size / 1024:.0f} KiB, "
        f"spanning {len(pages)} pages of 4 KiB"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "order":
        order(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
