#!/usr/bin/env bash
# Regenerates crates/sori-domain/data/uap-regexes.json, the user-agent dataset the domain
# embeds, from the regexes.yaml of uap-core (https://github.com/ua-parser/uap-core,
# Apache-2.0) that ships inside the ua-parser crate. JSON, because serde_json is already a
# dependency and YAML would add a parser for one file. Needs Python's PyYAML.
# Usage: scripts/uap-regexes.sh [path/to/regexes.yaml]
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-$(ls -d ~/.cargo/registry/src/*/ua-parser-*/uap-core/regexes.yaml | sort -V | tail -n 1)}
python3 - "$src" crates/sori-domain/data/uap-regexes.json <<'PY'
import json, sys, yaml
data = yaml.safe_load(open(sys.argv[1]))
with open(sys.argv[2], "w") as out:
    json.dump(data, out, separators=(",", ":"), ensure_ascii=False)
    out.write("\n")
print({k: len(v) for k, v in data.items()})
PY
