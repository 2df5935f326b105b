#!/usr/bin/env python3
"""Links one executable of a finished SwiftPM build again, with Swift's runtime inside, without SwiftPM.

`make test` installs a .deb of its own debug build under systemd. `swift build --static-swift-stdlib --product X`
would relink it, but SwiftPM holds the build directory's lock while `swift test` runs, so the relink would have to
wait for the whole suite. SwiftPM's build manifest (`.build/debug.yaml`) holds the link command it ran for the
product; this runs the same command with `-static-stdlib` and the extra linker arguments given, into another file,
reading only what the build left behind.

    relink-static.py MANIFEST BIN_DIR PRODUCT OUTPUT [SWIFTC_ARGUMENT ...]
"""
import json
import subprocess
import sys


def link_command(manifest, product_path):
    """The `args` of the manifest's command whose outputs are exactly [product_path]."""
    outputs_line = "outputs: " + json.dumps([product_path])
    with open(manifest, encoding="utf-8") as lines:
        found = False
        for line in lines:
            stripped = line.strip()
            if stripped == outputs_line:
                found = True
            elif found and stripped.startswith("args: "):
                return json.loads(stripped[len("args: "):])
            elif found and not line.startswith("    "):
                found = False
    return None


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    manifest, bin_dir, product, output = sys.argv[1:5]
    extra = sys.argv[5:]
    args = link_command(manifest, f"{bin_dir}/{product}")
    if args is None or "-o" not in args:
        sys.exit(f"relink-static: {manifest} has no link command for {bin_dir}/{product}: build it first "
                 "(`swift build --build-tests`), or SwiftPM's manifest changed shape")
    args[args.index("-o") + 1] = output
    subprocess.run(args + ["-static-stdlib"] + extra, check=True)


if __name__ == "__main__":
    main()
