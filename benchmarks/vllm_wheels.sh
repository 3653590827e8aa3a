#!/usr/bin/env bash
# Gather, on this CPU machine, every wheel that vllm==0.26.0 needs on the GPU machine (no network there; Python 3.12,
# torch 2.11.0+cu130 with its nvidia-* / cuda-* / triton wheels already installed), and pack them into carry folders.
#   bash benchmarks/vllm_wheels.sh [FREEZE]
# FREEZE (optional): `python3 -m pip list --format=freeze` of the GPU machine. A package listed there at a version that
# satisfies what vLLM's dependency tree asks of it is left out (and pinned at that version while resolving, so the rest
# fits it); without FREEZE only torch and the CUDA wheels torch brings (nvidia-*, cuda-*, triton) are left out.
# Output, all under the git-ignored .whlv/:
#   .whlv/all/       the wheels (cp312 / abi3 / py3-none-any, manylinux x86_64), .whlv/wheels.txt their name==version
#   .whlv/p01 p02 …  carry folders of at most 60 MiB each (hard links into all/). A wheel over 60 MiB is cut with
#                    `split -b 60M` into NAME.whl.part00, .part01, … in consecutive folders (`cat NAME.whl.part*` joins
#                    them); SHA256SUMS of the whole wheels lies in the folder with the most room.
# Then, on the GPU machine, one call per folder (carry [".whlv/pNN"]):  bash benchmarks/vllm_device.sh add .whlv/pNN
# and in the last one also:                                               bash benchmarks/vllm_device.sh install
# Settings: SKIP="name ..." leaves packages out on purpose (default: DEFAULT_SKIP below); PY312=path of a python3.12 for resolving (markers);
#   MANYLINUX_MAX=35 (highest manylinux_2_N glibc accepted; the GPU image's Python 3.12.3 suggests glibc 2.39);
#   CUDA_PINS (default pins the CUDA compiler wheels to the 13.0 series of the driver/torch: nvcc, crt, nvvm, cccl).
# The course's pins of the packages it shares with vLLM (requirements-vllm.txt) are constraints too.
set -euo pipefail
cd "$(dirname "$0")/.."
FREEZE=${1:-}
[ -z "$FREEZE" ] || FREEZE=$(realpath "$FREEZE")
D=.whlv
LIMIT=$((60 * 1024 * 1024))
mkdir -p "$D/all"

# a python3.12 resolves, so that python_version markers are those of the GPU machine's python3
if [ -z "${PY312:-}" ]; then
  for c in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY312=$c; break; fi
  done
fi
if [ ! -x "$D/.tool/bin/python" ]; then
  if [ -n "${PY312:-}" ]; then "$PY312" -m venv "$D/.tool"; else
    echo "warning: no python3.12 found; markers are evaluated for $(python3 -V)" >&2; python3 -m venv "$D/.tool"; fi
  "$D/.tool/bin/python" -m pip install -q -U pip packaging 2>&1 | grep -v -e WARNING -e "is ignored" || true
fi
TOOL=$D/.tool/bin/python

PLAT="--platform manylinux2014_x86_64"
for n in $(seq 17 "${MANYLINUX_MAX:-35}"); do PLAT="$PLAT --platform manylinux_2_${n}_x86_64"; done
# Left out unless SKIP is set: wheels that a bf16 or GPTQ Qwen2 on an H100/H200 never imports (vLLM imports each of
# them inside the function that needs it), 414 MB, 7 carry calls: cutlass-dsl with its CUDA 12 and CUDA 13 libraries
# (FlashAttention 4's CuTe path, Blackwell; cutlass-dsl itself must go too: without a CUDA flavour its import raises
# RuntimeError "No CTK flavor installed", which FlashInfer's availability check does not catch, and vLLM's engine
# failed to start on the H100; without cutlass-dsl FlashInfer reports CuTe DSL unavailable and vLLM starts; a learner's
# `pip install vllm` gets `nvidia-cutlass-dsl[cu13]`, the CUDA 13 flavour, as vLLM's metadata asks), a video
# decoder and OpenCV (video inputs), tilelang and its z3 solver (mHC kernels), tokenspeed (DeepSeek's MLA), and the
# nvcc/nvvm wheels (the GPU image has a system nvcc, and with VLLM_USE_FLASHINFER_SAMPLER=0 nothing compiles at
# start-up). `vllm_device.sh install` imports vllm, its compiled ops and FlashInfer's modules that the engine imports
# at start-up afterwards, so a wheel left out wrongly (or one that breaks an import) shows there.
DEFAULT_SKIP="nvidia-cutlass-dsl nvidia-cutlass-dsl-libs-base nvidia-cutlass-dsl-libs-core nvidia-cutlass-dsl-libs-cu12
  nvidia-cutlass-dsl-libs-cu13 pynvvideocodec opencv-python-headless tilelang
  z3-solver tokenspeed-mla tokenspeed-triton nvidia-cuda-nvcc nvidia-nvvm"
export PLAT D FREEZE SKIP="${SKIP-$DEFAULT_SKIP}"
export CUDA_PINS="${CUDA_PINS-nvidia-cuda-nvcc<13.1 nvidia-cuda-crt<13.1 nvidia-nvvm<13.1 nvidia-cuda-cccl<13.1}"
# the course's own pins for what it shares with vLLM (transformers, hub, openai, ...), as `bash setup.sh vllm` installs
# them: requirements-vllm.txt without its vllm / torch lines (0.27.1 / 2.13.0 there; 0.26.0 / 2.11.0 on the GPU machine)
COURSE_PINS=$(grep -E '^[A-Za-z0-9_.-]+(\[[^]]*\])?==' requirements-vllm.txt | grep -v -E '^(vllm|torch)==' | sed 's/\[[^]]*\]//')
export COURSE_PINS

# resolve (pip's dry run: metadata only, no big downloads) and choose; writes $D/wheels.txt and $D/files.txt
"$TOOL" - <<'EOF'
import json, os, re, subprocess, sys, tempfile
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name as cn
from packaging.version import Version

D, plat = os.environ["D"], os.environ["PLAT"].split()
ROOTS = ["vllm==0.26.0", "torch==2.11.0"]
built = os.path.join(D, "built")  # pure-Python wheels built here from sdist-only dependencies
os.makedirs(built, exist_ok=True)

def resolve(pins):
    with tempfile.TemporaryDirectory() as tmp:
        cfile = os.path.join(tmp, "c.txt")
        with open(cfile, "w") as f:
            f.write("\n".join(os.environ["CUDA_PINS"].split() + os.environ["COURSE_PINS"].split()
                              + [f"{n}=={v}" for n, v in pins.items()]) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--only-binary=:all:",
               *plat, "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
               "--abi", "none", "--target", os.path.join(tmp, "t"), "--report", os.path.join(tmp, "r.json"),
               "--find-links", built, "-c", cfile, *ROOTS]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            return None, p.stderr
        return json.load(open(os.path.join(tmp, "r.json"))), ""

def graph(report):
    """name -> (version, filename, url); name -> list of (parent, SpecifierSet) from the active requirements."""
    env = report["environment"]
    items = {cn(i["metadata"]["name"]): i for i in report["install"]}
    extras = {n: set(i.get("requested_extras") or []) for n, i in items.items()}
    specs, edges = {}, {}
    changed = True
    while changed:  # extras requested by parents switch on more requirements: iterate to a fixpoint
        changed = False
        specs, edges = {}, {}
        for n, i in items.items():
            for s in i["metadata"].get("requires_dist", []):
                r = Requirement(s)
                if r.marker and not any(r.marker.evaluate({**env, "extra": e}) for e in extras[n] | {""}):
                    continue
                c = cn(r.name)
                if c not in items:
                    continue
                specs.setdefault(c, []).append((n, r.specifier))
                edges.setdefault(n, set()).add(c)
                if not set(r.extras) <= extras[c]:
                    extras[c] |= set(r.extras); changed = True
    return items, specs, edges

def no_match(err):
    m = re.search(r"No matching distribution found for (\S+)", err)
    return m.group(1) if m else None

def build_pure(req):
    """An sdist-only dependency: build its wheel; keep it only if it is pure Python."""
    out = tempfile.mkdtemp()
    try:
        p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, req],
                           capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        print(f"{req}: building from its sdist took over 10 min"); return False
    wheels = [w for w in os.listdir(out) if w.endswith(".whl")] if p.returncode == 0 else []
    if wheels and all(w.endswith("-none-any.whl") for w in wheels):
        for w in wheels:
            os.replace(os.path.join(out, w), os.path.join(built, w))
        print(f"built pure-Python wheel(s) from sdist: {', '.join(wheels)}")
        return True
    print(f"{req}: no cp312 manylinux wheel and no pure-Python build ({'not pure' if wheels else p.stderr[-300:]})")
    return False

freeze = {}
if os.environ["FREEZE"]:
    for line in open(os.environ["FREEZE"]):
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            freeze[cn(m.group(1))] = m.group(2)
skip = {cn(s) for s in os.environ["SKIP"].split()}

pins, report, tries = {}, None, 0
while True:
    tries += 1
    r, err = resolve(pins)
    if r is None:
        bad = no_match(err)
        name = cn(Requirement(bad).name) if bad else None
        if name in pins and tries < 30:  # the machine's version is not on PyPI as a wheel: resolve without the pin
            print(f"note: {name}=={pins.pop(name)} (from the freeze) has no usable wheel on PyPI; not pinned")
            continue
        if bad and tries < 30 and name not in pins and build_pure(bad):
            continue
        if report is None:
            sys.exit("resolution failed:\n" + err[-3000:])
        print("note: resolution with more pins failed; using the previous one:\n" + err[-1500:])
        pins = prev_pins
        break
    report = r
    items, specs, edges = graph(report)
    # torch's own closure: the CUDA parts of it are on the GPU machine with torch
    torch_cuda, todo = set(), ["torch"]
    while todo:
        n = todo.pop()
        for c in edges.get(n, ()):
            if c not in torch_cuda:
                torch_cuda.add(c); todo.append(c)
    torch_cuda = {"torch"} | {n for n in torch_cuda if re.match(r"^(nvidia-|cuda-|triton$)", n)}
    if not freeze:
        break
    new = {}
    for n, v in freeze.items():
        if n not in items:
            continue
        pub = Version(v).public
        if n in torch_cuda or all(s.contains(Version(v), prereleases=True) for _, s in specs.get(n, [])):
            new[n] = pub
    if new == pins or tries > 8:
        break
    prev_pins, pins = pins, new

items, specs, edges = graph(report)
keep, left = [], []
for n, i in sorted(items.items()):
    v = i["metadata"]["version"]
    url = i["download_info"]["url"]
    why = ("torch / its CUDA wheels" if n in torch_cuda else
           f"on the GPU machine ({freeze[n]})" if n in freeze and Version(freeze[n]).public == Version(v).public else
           "SKIP" if n in skip else None)
    (left if why else keep).append((n, v, url, why))
with open(os.path.join(D, "wheels.txt"), "w") as f:
    f.writelines(f"{n}=={v}\n" for n, v, u, _ in keep)
with open(os.path.join(D, "urls.txt"), "w") as f:  # the very files resolved (those not downloaded yet)
    f.writelines(f"{u}\n" for n, v, u, _ in keep
                 if u.startswith("http") and not os.path.exists(os.path.join(D, "all", u.rsplit("/", 1)[1])))
with open(os.path.join(D, "local.txt"), "w") as f:  # from a local index or built here: file:// URLs
    f.writelines(f"{u[len('file://'):]}\n" for n, v, u, _ in keep if u.startswith("file://"))
with open(os.path.join(D, "files.txt"), "w") as f:
    f.writelines(f"{u.rsplit('/', 1)[1]}\n" for n, v, u, _ in keep)
with open(os.path.join(D, "left_out.txt"), "w") as f:
    f.writelines(f"{n}=={v}  ({why})\n" for n, v, u, why in left)
print(f"resolved {len(items)} packages in {tries} pass(es); carrying {len(keep)}, leaving out {len(left)} "
      f"(list: {D}/left_out.txt)")
EOF

# download the chosen wheels by their resolved URLs (exactly the files resolved); local ones (a file:// index, pure
# wheels built from sdists) are copied
if [ -s "$D/urls.txt" ]; then
  "$TOOL" -m pip download -q --no-deps -d "$D/all" -r "$D/urls.txt" 2>&1 | grep -v -e WARNING -e "is ignored" || true
fi
while read -r f; do cp -p "$f" "$D/all/"; done <"$D/local.txt"
while read -r f; do [ -f "$D/all/$f" ] || { echo "missing: $f" >&2; exit 1; }; done <"$D/files.txt"
for f in "$D"/all/*.whl; do grep -qxF "$(basename "$f")" "$D/files.txt" || rm -f "$f"; done  # stale ones
(cd "$D/all" && xargs sha256sum <../files.txt >../SHA256SUMS)

# pack: pieces of the big wheels first (consecutive folders), then first-fit decreasing by size
rm -rf "$D"/p[0-9][0-9] "$D/split"
mkdir -p "$D/split"
declare -a used=()
folder() { printf '%s/p%02d' "$D" $(($1 + 1)); }
place() {  # place FILE SIZE [INDEX]: into folder INDEX, or the first one with room, or a new one
  local i=${3:-}
  if [ -z "$i" ]; then
    for i in "${!used[@]}"; do [ $((used[i] + $2)) -le $LIMIT ] && break; i=; done
    [ -n "$i" ] || i=${#used[@]}
  fi
  used[i]=$(( ${used[i]:-0} + $2 )); mkdir -p "$(folder "$i")"; ln "$1" "$(folder "$i")/"
}
while read -r size f; do
  if [ "$size" -gt "$LIMIT" ]; then
    split -b 60M -d -a 2 "$D/all/$f" "$D/split/$f.part"
    for piece in "$D/split/$f".part*; do place "$piece" "$(stat -c %s "$piece")" "${#used[@]}"; done
  fi
done < <(cd "$D/all" && xargs stat -c '%s %n' <../files.txt | sort -rn)
while read -r size f; do
  [ "$size" -gt "$LIMIT" ] || place "$D/all/$f" "$size"
done < <(cd "$D/all" && xargs stat -c '%s %n' <../files.txt | sort -rn)
best=0; for i in "${!used[@]}"; do [ "${used[i]}" -lt "${used[best]}" ] && best=$i; done
cp "$D/SHA256SUMS" "$(folder "$best")/"

printf '%-6s %9s  %s\n' folder MiB contents
total=0
for i in "${!used[@]}"; do
  f=$(folder "$i"); bytes=$(du -cb "$f"/* | tail -1 | cut -f1); total=$((total + bytes))
  printf '%-6s %9.1f  %s\n' "${f#"$D"/}" "$(awk "BEGIN{print $bytes / 1048576}")" "$(cd "$f" && printf '%s\n' * | sed 's/-[^-]*-[^-]*-[^-]*\.whl/.whl/' | tr '\n' ' ')"
done
printf 'total  %9.1f MiB in %d folders (one device call each): %d wheels, list in %s/wheels.txt\n' \
  "$(awk "BEGIN{print $total / 1048576}")" "${#used[@]}" "$(wc -l <"$D/files.txt")" "$D"
