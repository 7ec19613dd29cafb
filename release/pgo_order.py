"""The hot-text order of a profile-guided build (release/pgo.sh): the
functions the training agent ran most, hottest first, as LLD's
--symbol-ordering-file reads them (build.rs, TRACEMESH_HOT_TEXT_ORDER).

  python3 pgo_order.py PROFTEXT BINARY ORDER > order

PROFTEXT: the training agent's profile in LLVM's text form
(`llvm-profdata merge --text`). BINARY: the profile-guided build linked once without this order;
its symbol table gives each profile name its final name (ThinLTO adds
`.llvm.<hash>` to some) and its size. Heat is a function's largest counter:
its hottest block's executions over the training. Functions that ran fewer
than MIN_COUNT times are left out (start-up, configuration), and the list
stops at LIMIT bytes: the text's first 2 MiB is what a proxy moves onto a
huge page (src/image.rs).

The profile counts only what was compiled instrumented: the standard
library (prebuilt) and mimalloc (C) run on every request but are not in
it. Their names are the same in every build of one toolchain, so they are
taken from ORDER, the plain build's order (hot-text.order, from a
callgrind profile of the agent): its names this BINARY defines follow.
"""

import re
import subprocess
import sys

MIN_COUNT = 1000
LIMIT = 2 << 20


def heat(proftext):
    """Profile name (its `file;` prefix dropped) -> largest counter."""
    counts = {}
    name, reading = None, False
    for line in open(proftext, errors="replace"):
        line = line.rstrip("\n")
        if not line:
            name, reading = None, False
        elif line.startswith("#") or line.startswith(":"):
            reading = line == "# Counter Values:"
        elif name is None:
            name = line.rsplit(";", 1)[-1]
        elif reading:
            value = int(line)
            if value > counts.get(name, 0):
                counts[name] = value
    return counts


def text_symbols(binary):
    """Name without ThinLTO's `.llvm.<hash>` -> [(final name, size)]."""
    out = subprocess.run(
        ["nm", "-S", "--defined-only", binary], check=True, capture_output=True, text=True
    ).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in ("t", "T"):
            base = re.sub(r"\.llvm\.\d+$", "", parts[3])
            symbols.setdefault(base, []).append((parts[3], int(parts[1], 16)))
    return symbols


def main(proftext, binary, plain_order):
    counts = heat(proftext)
    symbols = text_symbols(binary)
    sizes = {final: size for named in symbols.values() for final, size in named}
    order = []
    for name in sorted(counts, key=lambda n: -counts[n]):
        if counts[name] < MIN_COUNT:
            break
        order.extend(final for final, _ in symbols.get(name, []))
    listed = set(order)
    for line in open(plain_order):
        name = line.strip()
        if name in sizes and name not in listed:
            order.append(name)
            listed.add(name)
    print("# Hot text of a profile-guided build, written by release/pgo.sh")
    print("# (release/pgo_order.py): hottest first.")
    total, kept = 0, 0
    for name in order:
        if total >= LIMIT:
            break
        print(name)
        total += sizes[name]
        kept += 1
    print(
        f"pgo_order: {kept} of {len(order)} functions, {total / 1024:.0f} KiB (limit {LIMIT >> 10} KiB)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3])
