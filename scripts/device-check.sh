#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU and no Rust toolchain, from the repo root,
# with what scripts/build-cuda.sh left in target/cuda/carry.tar.xz (or target/cuda/carry/)
# carried along:
#
#   OUT=/some/folder scripts/device-check.sh
#
# 1. the tests that compare GPU and CPU logits on the tiny random model (tests/device.rs),
#    with a missing GPU counted as a failure;
# 2. `morphkv bench --random-weights` for SmolLM2-135M and Llama-3.2-1B shapes, full cache
#    against MorphKV (budget 600, window 30), at 1K and 8K tokens of context;
# 3. with tok.gguf in the carry, Llama-3.2-1B-shaped Q4_K_M and Q8_0 files (random weights):
#    perplexity on the GPU against the CPU, and decode speed on the GPU;
# writing everything to $OUT: gpu.txt, device-test.txt, bench-<preset>.{json,txt},
# formats-<type>.txt.
# Budget: a few minutes on an H100/H200 (device time is scarce; each step has a timeout).
#
# The binary needs libcuda.so.1 (the driver) and the CUDA 13 libraries libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10 and libcudart.so.13. Where they are not
# on the loader's path already, they are looked for in a PyTorch environment's nvidia/*/lib
# folders; MORPHKV_CUDA_LIBS overrides the search.
set -uo pipefail

out="${OUT:-$PWD/device-out}"
mkdir -p "$out"
bin="target/cuda/carry"
if [[ ! -x "$bin/morphkv" && -f target/cuda/carry.tar.xz ]]; then
  mkdir -p "$bin"
  tar -C "$bin" -xJf target/cuda/carry.tar.xz 2>/dev/null ||
    python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' target/cuda/carry.tar.xz "$bin"
fi
for f in morphkv device-test; do
  [[ -x "$bin/$f" ]] || { echo "device-check: $bin/$f is missing: run scripts/build-cuda.sh first and carry $bin" >&2; exit 2; }
done

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

# Find the CUDA 13 libraries.
need=(libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13)
libs="${MORPHKV_CUDA_LIBS:-}"
if [[ -z "$libs" ]]; then
  missing=$(ldd "$bin/morphkv" | grep -c "not found" || true)
  if [[ "$missing" != 0 ]]; then
    roots=()
    for py in python3 python; do
      r=$("$py" -c 'import site,sys; print("\n".join(site.getsitepackages()+[site.getusersitepackages()]))' 2>/dev/null) && roots+=($r)
    done
    roots+=(/usr/local/lib /opt /usr/lib /root /home /workspace /venv)
    dirs=$(for r in "${roots[@]}"; do [[ -d "$r" ]] && find "$r" -maxdepth 7 \( -name 'libcublas.so.13' -o -name 'libcurand.so.10' -o -name 'libcudart.so.13' -o -name 'libcublasLt.so.13' \) -printf '%h\n' 2>/dev/null; done | sort -u | paste -sd:)
    libs="$dirs"
  fi
fi
[[ -n "$libs" ]] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" | tee "$out/env.txt"
if ldd "$bin/morphkv" | grep "not found" | tee -a "$out/env.txt" | grep -q .; then
  echo "device-check: libraries not found (above); set MORPHKV_CUDA_LIBS to the folder(s) holding ${need[*]}" >&2
  exit 3
fi

status=0
echo "== GPU against CPU logits (tests/device.rs)"
MORPHKV_REQUIRE_GPU=1 timeout 240 "$bin/device-test" --test-threads 1 2>&1 | tee "$out/device-test.txt"
[[ ${PIPESTATUS[0]} == 0 ]] || status=1

for preset in smollm2-135m-instruct llama3.2-1b-instruct; do
  echo "== bench --random-weights $preset"
  timeout 240 "$bin/morphkv" bench --device cuda --random-weights "$preset" \
    --policies full,morphkv --budget 600 --window 30 --contexts 1024,8192 \
    --decode-tokens 64 --reps 2 --no-reference --json "$out/bench-$preset.json" \
    2>&1 | tee "$out/bench-$preset.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
done

# 3. Real weight formats on the GPU: Llama-3.2-1B-shaped random GGUFs written here (the carry
#    holds only a tiny GGUF with SmolLM2's tokenizer, tok.gguf), their perplexity on one text on
#    the GPU against the CPU (random weights: the two must agree, not be good), and decode speed
#    on the GPU under the full cache and MorphKV.
if [[ -f "$bin/tok.gguf" ]]; then
  prompt="${TMPDIR:-/tmp}/morphkv-prompt.txt"
  head -c 4000 eval/texts/alice-in-wonderland.txt >"$prompt" # about 1,000 tokens
  for t in q4_k_m q8_0; do
    f="${TMPDIR:-/tmp}/morphkv-l1b-$t.gguf"
    rm -f "$f"
    echo "== $t weights: write, perplexity cuda against cpu, decode on cuda"
    timeout 120 "$bin/morphkv" models random llama3.2-1b-instruct --type "$t" \
      --tokenizer-from "$bin/tok.gguf" -o "$f" 2>&1 | tee "$out/formats-$t.txt" || { status=1; continue; }
    for dev in cuda cpu; do
      timeout 120 "$bin/morphkv" eval --task perplexity --tokens 512 -m "$f" --device "$dev" 2>&1 |
        grep -E "Final estimate|rror" | sed "s/^/$dev: /" | tee -a "$out/formats-$t.txt"
    done
    for p in full morphkv; do
      timeout 120 "$bin/morphkv" generate -m "$f" --device cuda --policy "$p" -f "$prompt" \
        --raw -n 256 --temp 0 --ignore-eos --prefill-chunk 512 2>&1 >/dev/null | tail -2 | sed "s/^/$p: /" |
        tee -a "$out/formats-$t.txt"
    done
    rm -f "$f"
  done
fi
exit $status
