"""Copy a wheel without the native libraries the GPU machine never loads, so that it fits one call's carry.

bitsandbytes ships a library per CUDA / ROCm / XPU version (43 MB); the GPU machine's torch is built for CUDA 13.0,
so only ``libbitsandbytes_cuda130.so`` (and the CPU one) is ever loaded there. RECORD keeps the kept files' rows.

    python benchmarks/slim_wheel.py /tmp/bnb_full/bitsandbytes-0.50.2-*.whl .whl --keep cpu cuda130  # device_wheels.sh
"""
import argparse
import re
import zipfile
from pathlib import Path


def slim_wheel(wheel: Path, out_dir: Path, keep: list[str]) -> Path:
    """Write ``out_dir/<wheel's name>`` without the ``lib*_<tag>.so`` files whose tag is not in ``keep``.

    >>> slim_wheel(Path("/tmp/bnb_full/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"), Path(".whl"),
    ...            ["cpu", "cuda130"])  # doctest: +SKIP
    PosixPath('.whl/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl')
    """
    tagged = re.compile(r"lib[\w]+_(\w+)\.so$")

    def wanted(name: str) -> bool:
        match = tagged.search(name)
        return match is None or match.group(1) in keep

    out = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if not wanted(item.filename):
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                rows = data.decode().splitlines(keepends=True)
                data = "".join(row for row in rows if wanted(row.split(",", 1)[0])).encode()
            target.writestr(item, data)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--keep", nargs="+", required=True, help="library tags to keep, e.g. cpu cuda130")
    args = parser.parse_args()
    if args.out_dir.resolve() == args.wheel.parent.resolve():
        parser.error("out_dir must differ from the wheel's folder: the wheel would be overwritten")
    print(slim_wheel(args.wheel, args.out_dir, args.keep))
