#!/usr/bin/env bash
# Builds `morphkv` with the `cuda` feature on a machine that has no CUDA toolkit and no GPU,
# from the compiler and libraries NVIDIA publishes on PyPI. The result is meant to be carried
# to a GPU machine (see scripts/device-check.sh); a user with a normal CUDA install needs none of
# this: `cargo build --release --features cuda` (README, "GPU").
#
#   scripts/build-cuda.sh     # -> target/cuda/carry/{morphkv,device-test}, stripped, and
#                             #    target/cuda/carry.tar.xz, the two packed for carrying
#
# Environment:
#   CUDA_COMPUTE_CAP   GPU architecture the kernels are compiled for (default 90: H100/H200)
#   MORPHKV_CUDA_DIR   where the toolkit is unpacked (default ~/.cache/morphkv/cuda-13.0)
#   CARGO_TARGET_DIR   build folder (default target/cuda, apart from the CPU build)
#
# Why these versions: the GPU machine's driver is 580 (CUDA 13.0). PTX from a newer nvcc would not
# load on it, so the toolkit is pinned to 13.0. The binary links libcublas.so.13, libcurand.so.10,
# libcudart.so.13 and libcuda.so.1 by soname (libnvrtc only at link time); on the GPU machine they come from
# the driver and from any CUDA 13 install (a PyTorch environment has them): point
# LD_LIBRARY_PATH there.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
cap="${CUDA_COMPUTE_CAP:-90}"
tk="${MORPHKV_CUDA_DIR:-$HOME/.cache/morphkv/cuda-13.0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target/cuda}"

wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
)

root="$tk/nvidia/cu13"
if [[ ! -x "$root/bin/nvcc" ]]; then
  echo "build-cuda: fetching the CUDA 13.0 toolkit wheels from PyPI into $tk (~700 MB)" >&2
  mkdir -p "$tk/wheels"
  python3 -m pip download --quiet --no-deps --dest "$tk/wheels" "${wheels[@]}"
  for w in "$tk"/wheels/*.whl; do
    python3 -m zipfile -e "$w" "$tk/"
  done
  chmod +x "$root"/bin/* "$root"/nvvm/bin/*
fi

# The linker wants unversioned names (-lcublas); the wheels ship only the sonames.
lib="$root/lib"
for so in "$lib"/lib{cublas,cublasLt,curand,nvrtc,cudart}.so.*; do
  base="${so%%.so.*}.so"
  [[ -e "$base" ]] || ln -s "$(basename "$so")" "$base"
done

# libcuda belongs to the driver, which this machine does not have. Link against a stub that
# defines every driver entry point cudarc declares, with the driver's soname, so the binary asks
# for libcuda.so.1 and the real driver answers at run time (the stub is never carried).
stubs="$lib/stubs"
if [[ ! -e "$stubs/libcuda.so" ]]; then
  mkdir -p "$stubs"
  cudarc_dir="$(cargo metadata --format-version 1 --features cuda 2>/dev/null |
    python3 -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"))')"
  grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_dir/src/driver/sys/mod.rs" |
    awk '{print $4}' | sort -u | sed 's/.*/void &(void) {}/' >"$stubs/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
fi

export CUDA_HOME="$root" CUDA_PATH="$root" CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP="$cap"
export PATH="$root/bin:$PATH"
export LIBRARY_PATH="$lib:$stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
# Two cores here: one nvcc at a time keeps memory in check while candle's kernels compile.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

echo "build-cuda: nvcc $("$root/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), sm_$cap, into $CARGO_TARGET_DIR" >&2
cargo build --release --features cuda --bin morphkv "$@"
# The GPU-vs-CPU logits test, built now so the device check needs no toolchain.
test_bin="$(cargo test --release --features cuda --test device --no-run --message-format json "$@" |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "device":
        print(m["executable"])')"
# What a GPU machine needs, stripped of debug info (the carried tree must stay under 64 MiB).
carry="$CARGO_TARGET_DIR/carry"
mkdir -p "$carry"
cp "$CARGO_TARGET_DIR/release/morphkv" "$carry/morphkv"
cp "$test_bin" "$carry/device-test"
strip "$carry/morphkv" "$carry/device-test"
# A tiny GGUF carrying the default model's tokenizer (2.5 MB), from which the device check
# writes 1B-shaped quantized files there (the GPU machine has no network and the carry is
# limited to 64 MiB), made by the CPU build when there is one.
cpu_bin="${MORPHKV_CPU_BIN:-$here/target/release/morphkv}"
extra=()
if [[ -x "$cpu_bin" ]]; then
  cfg="$(mktemp -d)"
  cat >"$cfg/models.toml" <<'TOML'
[[model]]
name = "tokenizer-carrier"
description = "one tiny layer, carrying the default model's tokenizer"
repo = "none/none"
file = "none.gguf"
arch = "llama"
context = 8192
shape = { layers = 1, heads = 1, kv_heads = 1, head_dim = 8, hidden = 8, ffn = 8, vocab = 49152, rope_base = 100000 }
TOML
  rm -f "$carry/tok.gguf"
  if MORPHKV_CONFIG_DIR="$cfg" "$cpu_bin" models random tokenizer-carrier --type f16 -o "$carry/tok.gguf" >&2; then
    extra=(tok.gguf)
  fi
  rm -rf "$cfg"
else
  echo "build-cuda: no CPU build at $cpu_bin: the device check will skip the quantized formats" >&2
fi
# Stripped they are still ~115 MB (candle's PTX and sm_90 kernels): compressed, ~16 MB.
tar -C "$carry" -cf - morphkv device-test "${extra[@]}" | xz -T2 -6 >"$CARGO_TARGET_DIR/carry.tar.xz"
du -sh "$carry"/* "$CARGO_TARGET_DIR/carry.tar.xz" >&2
echo "build-cuda: built $carry/morphkv and $carry/device-test, packed in $CARGO_TARGET_DIR/carry.tar.xz" >&2
