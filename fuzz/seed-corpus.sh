#!/bin/bash
# Builds the fuzzers' seed corpus from the wire codec's hex fixtures (real captured packets),
# so that no binary file is committed. Run from anywhere; then e.g.
#   cd fuzz && cargo +nightly fuzz run packet_roundtrip corpus/packet_roundtrip -- -max_total_time=60
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for target in packet_roundtrip respond; do
  mkdir -p "$here/corpus/$target"
  for f in "$here"/../crates/ntpkit-wire/tests/fixtures/*.hex; do
    python3 -c 'import sys; open(sys.argv[2], "wb").write(bytes.fromhex(open(sys.argv[1]).read().strip()))' \
      "$f" "$here/corpus/$target/$(basename "$f" .hex)"
  done
done
echo "seed corpus written to $here/corpus"
